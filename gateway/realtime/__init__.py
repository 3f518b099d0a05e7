"""`/v1/realtime`: OpenAI's Realtime API over a WebSocket, relayed to an OpenAI-compatible
upstream or an Azure OpenAI realtime deployment, and billed per response.

- `routing`   the Channels URLRouter gateway/asgi.py hands `websocket` scopes to
- `consumer`  the session: authenticate, open the upstream (pipeline.open_upstream: routing,
              failover before the socket opens, breakers, the lease), relay, bill
- `upstream`  the upstream socket: URL and headers from the kind's gateway.dialects record,
              credentials from its transport (gateway.adapters: API key or Entra ID token)
- `accounting`  pure: which frames accounting reads, usage from `response.done` into the IR,
              the error event a refused `response.create` gets
"""
