"""``python -m ic_core serve``: the gate in front of a model, as an OpenAI-compatible endpoint.

:func:`ic_core.serve.app.create_app` builds the FastAPI app (imported lazily: FastAPI is only
needed by the server). The engine (check, audit record, answer) is :mod:`ic_core.serve.engine`.
"""
