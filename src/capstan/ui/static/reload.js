/* A link from another site arrives without the SameSite=Strict session cookie: open the same address again from
 * this site, which sends it. */
window.location.replace(window.location.href);
