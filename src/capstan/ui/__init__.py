"""The web UI served by ``capstan server`` under ``/ui``: server-rendered Jinja2 pages, small scripts of our own, and
a JSON twin under ``/api/v1`` for every page (see docs/ui.md)."""
