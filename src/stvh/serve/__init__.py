"""``stvh serve``: an HTTP API and a search page over a trained run and its index.

* :mod:`.settings` -- paths, address, write permission and upload limits;
* :mod:`.service` -- the state loaded once (index, model, dataset clips, uploads);
* :mod:`.uploads` -- an uploaded video or zip of frames + MOT tracks -> a clip;
* :mod:`.images`  -- key frames and attention maps as pictures;
* :mod:`.app`     -- the FastAPI routes, the page in ``static/``;
* :mod:`.run`     -- start it with uvicorn.

See ``docs/serve.md``.
"""

from .settings import ServeSettings, UploadLimits

__all__ = ["ServeSettings", "UploadLimits", "create_app", "serve"]


def create_app(service):
    from .app import create_app as _create

    return _create(service)


def serve(settings: ServeSettings, echo=print) -> None:
    from .run import serve as _serve

    _serve(settings, echo=echo)
