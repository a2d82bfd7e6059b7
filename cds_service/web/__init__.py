"""HTTP: the Flask app and its routes, the gunicorn server, who may call (JWTs, key sets, CORS), the
body as read, the admin endpoints, health and metrics. Hands each hook call to service.CdsService."""
