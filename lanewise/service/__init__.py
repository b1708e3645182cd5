"""`lanewise serve`: the live lane and the deferred-work queue over HTTP.

    app.py     create_app: one app, one live lane, the token read once
    routes.py  POST /v1/tasks/{task}/call, POST /v1/tasks/{task}/enqueue,
               GET /v1/requests/{id}, GET /v1/tasks, GET /health
    auth.py    the bearer token (LANEWISE_SERVICE_TOKEN or a Prefect Secret block)
    models.py  request and response bodies (what /openapi.json documents)
"""
