/* GET / for browsers: the MLflow client prints links such as /#/experiments/1/runs/abc; the fragment never reaches
 * the server, so this script maps it to the matching page of the web UI (and anything else to /ui/). */
(function () {
  "use strict";
  var hash = window.location.hash || "";
  var enc = function (part) {
    try { return encodeURIComponent(decodeURIComponent(part)); } catch (e) { return encodeURIComponent(part); }
  };
  var target = "/ui/";
  var m;
  if ((m = hash.match(/^#\/experiments\/([^\/?#]+)\/runs\/([^\/?#]+)/))) {
    target = "/ui/runs/" + enc(m[2]);
  } else if ((m = hash.match(/^#\/experiments\/([^\/?#]+)/))) {
    target = "/ui/experiments/" + enc(m[1]);
  } else if ((m = hash.match(/^#\/models\/([^\/?#]+)\/versions\/([^\/?#]+)/))) {
    target = "/ui/models/" + enc(m[1]) + "/versions/" + enc(m[2]);
  } else if ((m = hash.match(/^#\/models\/([^\/?#]+)/))) {
    target = "/ui/models/" + enc(m[1]);
  }
  window.location.replace(target);
})();
