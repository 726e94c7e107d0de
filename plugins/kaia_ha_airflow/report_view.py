"""The run's report in the Airflow UI: a "Report" tab on every DAG run page.

An Airflow 3 plugin: a FastAPI app mounted by the api-server under ``/kaia-ha`` serves a run's report from the
store the ``report`` tasks write to (``kaia_ha.model.report_store``: ``KAIA_HA_REPORT_URL`` or the local folder),
and an external view with destination ``dag_run`` shows it in the run page's tab (the UI fills ``{DAG_ID}`` and
``{RUN_ID}`` into the href and loads it in an iframe):

- ``/kaia-ha/reports/<dag_id>/<run_id>``: the Markdown report as HTML (raw HTML in it is escaped);
- ``.../json`` and ``.../markdown``: the report as written.

Every endpoint needs the Airflow login (the UI's JWT cookie or a Bearer token) and the DAG-run read permission
of that DAG, checked as the core API checks them. The app is built on its first request: this module is imported
by every Airflow process that loads plugins (scheduler, dag-processor, workers), and only the api-server serves it.
"""

from __future__ import annotations

import functools
import html
from urllib.parse import quote, urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from kaia_ha.model import report_store
from kaia_ha_airflow.iam import needs

URL_PREFIX = "/kaia-ha"
KINDS = {"json": "application/json", "markdown": "text/plain; charset=utf-8"}


def _root_path() -> str:
    """The api-server's path under ``[api] base_url`` ("/" unless Airflow is served below a path)."""
    path = urlsplit(conf.get("api", "base_url", fallback="") or "/").path or "/"
    return path if path.endswith("/") else path + "/"


@needs("s3:GetObject")
def read(dag_id: str, run_id: str, kind: str) -> str | None:
    """A run's report as stored (``kind``: json or markdown); None if there is none. ValueError for a DAG id or
    run id that names nothing inside the store."""
    from airflow.sdk import ObjectStoragePath

    try:
        where = report_store.store()
    except ValueError as exc:  # the setting, not the request
        raise RuntimeError(str(exc)) from None
    url = where.locate(dag_id, run_id)[kind]
    try:
        return ObjectStoragePath(url, conn_id=where.conn_id).read_text()
    except FileNotFoundError:
        return None


def to_html(markdown: str) -> str:
    """Markdown (CommonMark and tables) to HTML with markdown-it-py (Airflow's own dependency, through rich); raw
    HTML in the text is escaped. Without markdown-it-py, the text in a ``<pre>``."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # pragma: no cover - markdown-it-py comes with Airflow
        return f"<pre>{html.escape(markdown)}</pre>"
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


_STYLE = """body{font-family:system-ui,sans-serif;margin:1rem;line-height:1.4;color:#1a202c;background:#fff}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #cbd5e0;padding:2px 6px;text-align:left;
font-size:.9rem}code,pre{background:#f7fafc}nav{font-size:.9rem;margin-bottom:1rem}
@media (prefers-color-scheme:dark){body{color:#e2e8f0;background:#1a202c}code,pre{background:#2d3748}
a{color:#90cdf4}}"""


def page(title: str, body: str, links: bool = True, run_id: str = "") -> str:
    nav = ""
    if links:
        base = quote(run_id, safe="")
        nav = f'<nav><a href="{base}/markdown">Markdown</a> · <a href="{base}/json">JSON</a></nav>'
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{nav}{body}</body></html>")


@functools.cache
def authorize():
    """The core API's check, as its DAG-run endpoints use it: a logged-in user (JWT cookie or Bearer token; 401
    without) allowed to read the runs of the path's ``dag_id`` (403 otherwise)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return requires_access_dag("GET", DagAccessEntity.RUN)


def create_app():
    """The FastAPI app (imports FastAPI and Airflow's API security here, not at module import)."""
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    # No docs pages: FastAPI serves them outside the app's dependencies (without the login).
    app = FastAPI(title="Kaia HA reports", dependencies=[Depends(authorize())], docs_url=None, redoc_url=None,
                  openapi_url=None)

    def stored(dag_id: str, run_id: str, kind: str) -> str:
        try:
            text = read(dag_id, run_id, kind)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except (OSError, RuntimeError) as exc:  # the store is unreachable, refuses, or is set wrong
            raise HTTPException(502, f"the report store could not be read: {type(exc).__name__}: {exc}") from None
        if text is None:
            raise HTTPException(404, f"no report of {dag_id} run {run_id} (yet): a DAG's report task writes it "
                                     "when the run's other tasks have ended")
        return text

    @app.get("/reports/{dag_id}/{run_id}", response_class=HTMLResponse)
    def report_page(dag_id: str, run_id: str) -> HTMLResponse:
        try:
            text = stored(dag_id, run_id, "markdown")
        except HTTPException as exc:
            body = f"<p>{html.escape(str(exc.detail))}</p>"
            return HTMLResponse(page(f"{dag_id} {run_id}", body, links=False), status_code=exc.status_code)
        return HTMLResponse(page(f"{dag_id} {run_id}", to_html(text), run_id=run_id))

    @app.get("/reports/{dag_id}/{run_id}/{kind}")
    def report_file(dag_id: str, run_id: str, kind: str) -> Response:
        if kind not in KINDS:
            raise HTTPException(404, f"{kind!r}: json or markdown")
        return Response(stored(dag_id, run_id, kind), media_type=KINDS[kind])

    return app


class LazyApp:
    """An ASGI app that builds ``create_app()`` on its first call (the api-server mounts it at startup)."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = create_app()
        await self._app(scope, receive, send)


class KaiaHaReportPlugin(AirflowPlugin):
    name = "kaia_ha_reports"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "Kaia HA reports"}]
    external_views = [{
        "name": "Report",
        "href": f"{_root_path()}{URL_PREFIX.lstrip('/')}/reports/{{DAG_ID}}/{{RUN_ID}}",
        "destination": "dag_run",
        "url_route": "kaia_ha_report",
    }]
