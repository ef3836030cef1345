"""The status page and /metrics (`postroom serve http`, `postroom spooler --http`): a front end
over the face, served by uvicorn (server.py) from a Starlette application (app.py)."""
