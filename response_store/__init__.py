"""Stored Responses API responses: what `previous_response_id` and `GET`/`DELETE
/v1/responses/{id}` read (gateway.surfaces.openai_responses)."""
