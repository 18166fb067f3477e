"""Tornado handlers, thin: parse, call one service, answer in the route's dialect.

``base`` (keys, request ids, CORS, errors), ``model_route`` (every model request, through the
request path in llmgw.proxy), ``info`` (models, health, engine props), ``ops`` (what runs,
load and unload, metrics), ``observe`` (events, request history, engine output, the web page).
"""
