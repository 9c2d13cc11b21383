"""Serve Label Studio with several gunicorn worker processes (runs inside Label Studio's own venv).

``label-studio start`` does the start-up we want (migrations, the admin user and its token) and then
serves through Django's single-process development server, where every request shares one GIL: a
JSON export of 5,000 reviewed tasks takes 11-18 s there however many requests ask for it. This
launcher runs that same start-up and hands Label Studio's own WSGI application to gunicorn instead,
so ``review pull`` can export slices of a project in parallel (about 2x on two cores).

    <venv>/bin/python ls_serve.py start --no-browser --internal-host 127.0.0.1 --port 8080

Workers: ``$VGMED_LABELSTUDIO_WORKERS`` (default 2). Not importable from vgmed's own environment.
"""

import os
import sys

import label_studio.server as ls_server

WORKERS_ENV = "VGMED_LABELSTUDIO_WORKERS"


def serve_with_gunicorn(host: str, port: int) -> None:
    """Stands in for ``label_studio.server._app_run`` (which would call Django's ``runserver``)."""
    from django.core.wsgi import get_wsgi_application
    from django.db import connections
    from gunicorn.app.base import BaseApplication

    application = get_wsgi_application()
    connections.close_all()  # opened by the migrations; each forked worker opens its own

    options = {
        "bind": f"{host}:{port}",
        "workers": int(os.environ.get(WORKERS_ENV, "2")),
        # sync workers take one request at a time, so parallel requests land on different processes
        "worker_class": "sync",
        "timeout": 900,  # a large import or export must not get its worker killed
        "graceful_timeout": 10,
        "limit_request_line": 8190,  # export slices pass task ids in the query string
        "control_socket_disable": True,  # else every server would share ~/.gunicorn/gunicorn.ctl
        "accesslog": None,
    }

    class LabelStudioServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return application

    LabelStudioServer().run()


if __name__ == "__main__":
    ls_server._app_run = serve_with_gunicorn
    sys.exit(ls_server.main())
