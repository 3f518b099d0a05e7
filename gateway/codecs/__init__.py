"""Pure translation between wire formats and the IR in `gateway.types`: no I/O, no Django.

One module per wire format, each exposing what applies to it:

- client-surface direction (all three): `parse_request(body) -> ChatRequest`,
  `format_response(resp, *, model, request_id) -> dict`, and `StreamEncoder` (IR events -> the
  surface's SSE events, with `feed`, `finish` and `error`);
- upstream direction (all three; `openai_responses` in `openai_responses_upstream`): `build_request(req, *,
  upstream_model, stream, options) -> dict`, `parse_response(body) -> ChatResponse`, and
  `StreamDecoder` (upstream SSE events -> IR events, with `feed` and `finish`).

Modules: `openai_chat`, `anthropic_messages`, `openai_responses` (each re-exporting its
`*_output` module, which holds response bodies and streams); `fields` (typed reads of client
JSON), `media` (data URLs, image/document allow-lists), `ids` (client-visible ids).
"""
