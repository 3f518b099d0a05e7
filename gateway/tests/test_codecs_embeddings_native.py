"""gateway.codecs.embeddings_native on the clouds' documented request and answer shapes
(Gemini API batchEmbedContents, Vertex AI text-embedding :predict, Bedrock Titan Text
Embeddings v2 and Cohere Embed InvokeModel bodies), and OpenAI's answer it writes, read back
as the openai SDK decodes base64 vectors. Pure."""
from __future__ import annotations

import array
import base64

import pytest

from gateway.codecs.embeddings_native import (BEDROCK, GEMINI, VERTEX, EmbeddingsAnswer,
                                              EmbeddingsRequest, embeddings_request,
                                              openai_body)
from gateway.errors import InvalidRequest, UpstreamFailed


def _req(model: str, *texts: str, dimensions: int | None = None) -> EmbeddingsRequest:
    return EmbeddingsRequest(upstream_model=model, inputs=texts, dimensions=dimensions)


def test_gemini_batch_embed_contents():
    req = _req("gemini-embedding-001", "What is the meaning of life?", "How much wood?",
               dimensions=768)
    assert GEMINI.build(req) == ({"requests": [
        {"model": "models/gemini-embedding-001",
         "content": {"parts": [{"text": "What is the meaning of life?"}]},
         "outputDimensionality": 768},
        {"model": "models/gemini-embedding-001",
         "content": {"parts": [{"text": "How much wood?"}]}, "outputDimensionality": 768}]},)
    answer = {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}
    assert GEMINI.parse((answer,), req) == EmbeddingsAnswer(((0.1, 0.2), (0.3, 0.4)), None)
    with pytest.raises(UpstreamFailed):
        GEMINI.parse(({"embeddings": [{"values": [0.1]}]},), req)


def test_vertex_predict():
    req = _req("text-embedding-005", "banana bread", "banana muffins", dimensions=256)
    assert VERTEX.build(req) == ({"instances": [{"content": "banana bread"},
                                                {"content": "banana muffins"}],
                                  "parameters": {"outputDimensionality": 256}},)
    answer = {"predictions": [
        {"embeddings": {"statistics": {"truncated": False, "token_count": 3},
                        "values": [0.25, -0.5]}},
        {"embeddings": {"statistics": {"truncated": False, "token_count": 4.0},
                        "values": [0.75, 1.0]}}]}
    assert VERTEX.parse((answer,), req) == EmbeddingsAnswer(((0.25, -0.5), (0.75, 1.0)), 7)
    assert VERTEX.build(_req("text-embedding-005", "x")) == ({"instances": [{"content": "x"}]},)


def test_bedrock_titan_one_body_per_input_and_cohere_one_for_all():
    titan = _req("amazon.titan-embed-text-v2:0", "a", "b c", dimensions=512)
    assert BEDROCK.build(titan) == ({"inputText": "a", "dimensions": 512, "normalize": True},
                                    {"inputText": "b c", "dimensions": 512, "normalize": True})
    answers = ({"embedding": [0.5], "inputTextTokenCount": 2},
               {"embedding": [0.25], "inputTextTokenCount": 3})
    assert BEDROCK.parse(answers, titan) == EmbeddingsAnswer(((0.5,), (0.25,)), 5)
    assert BEDROCK.build(_req("amazon.titan-embed-text-v1", "a")) == ({"inputText": "a"},)
    with pytest.raises(InvalidRequest):
        BEDROCK.build(_req("amazon.titan-embed-text-v1", "a", dimensions=8))
    cohere = _req("cohere.embed-english-v3", "a", "b")
    assert BEDROCK.build(cohere) == ({"texts": ["a", "b"], "input_type": "search_document"},)
    listed = {"embeddings": [[0.5], [1.5]], "id": "x", "response_type": "embeddings_floats",
              "texts": ["a", "b"]}
    typed = {"embeddings": {"float": [[0.5], [1.5]]}, "id": "x",
             "response_type": "embeddings_by_type", "texts": ["a", "b"]}
    for answer in (listed, typed):
        assert BEDROCK.parse((answer,), cohere) == EmbeddingsAnswer(((0.5,), (1.5,)), None)
    with pytest.raises(InvalidRequest):
        BEDROCK.build(_req("amazon.nova-lite-v1:0", "a"))


def test_openai_answer_base64_is_what_the_openai_sdk_decodes():
    req = embeddings_request({"model": "m", "input": ["a", "b"], "encoding_format": "base64"},
                             "up")
    body = openai_body(EmbeddingsAnswer(((0.5, -1.25), (3.0, 0.125)), 9), req, model="m",
                       prompt_tokens=9)
    # little-endian float32, read as the openai SDK does without numpy
    decoded = [array.array("f", base64.b64decode(d["embedding"])).tolist()
               for d in body["data"]]
    assert decoded == [[0.5, -1.25], [3.0, 0.125]]
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert [d["index"] for d in body["data"]] == [0, 1] and body["object"] == "list"


def test_token_arrays_and_unknown_encodings_are_refused():
    with pytest.raises(InvalidRequest):
        embeddings_request({"input": [[1, 2]]}, "up")
    with pytest.raises(InvalidRequest):
        embeddings_request({"input": "a", "encoding_format": "int8"}, "up")
