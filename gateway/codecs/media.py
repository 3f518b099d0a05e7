"""Images and documents: data URLs, and the per-deployment allow-lists.

OpenAI carries inline files as `data:<media type>;base64,<data>` URLs; Anthropic carries the media
type and base64 data separately. The IR keeps them separate (`ImagePart.data`/`media_type`).
"""
from __future__ import annotations

from gateway.errors import InvalidRequest
from gateway.types import (ChatRequest, CodecOptions, DocumentPart, ImagePart, Message,
                           ToolResultPart)


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a base64 data URL; None for any other URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type:
        return None
    return media_type, data


def data_url(media_type: str, data: str) -> str:
    return f"data:{media_type};base64,{data}"


def image_from_url(url: str, *, detail: str | None, param: str) -> ImagePart:
    """An ImagePart from an OpenAI image URL, which is either http(s) or a base64 data URL."""
    if url.startswith("data:"):
        parsed = parse_data_url(url)
        if parsed is None:
            raise InvalidRequest("image data URLs must look like data:<media type>;base64,<data>",
                                 param=param)
        return ImagePart(media_type=parsed[0], data=parsed[1], detail=detail)
    return ImagePart(url=url, detail=detail)


def image_url(part: ImagePart) -> str:
    """The OpenAI image URL for an ImagePart: its URL, or a data URL of its inline bytes."""
    if part.url is not None:
        return part.url
    assert part.data is not None and part.media_type is not None
    return data_url(part.media_type, part.data)


def check_media_allowed(req: ChatRequest, options: CodecOptions) -> None:
    """Raise InvalidRequest if `req` carries images or documents the deployment does not accept."""
    for i, message in enumerate(req.messages):
        for part in _media_parts(message):
            if isinstance(part, ImagePart) and not options.allow_images:
                raise InvalidRequest("this model does not accept images",
                                     param=f"messages[{i}].content")
            # A plain-text document is sent as text, which every model takes.
            if isinstance(part, DocumentPart) and part.text is None \
                    and not options.allow_documents:
                raise InvalidRequest("this model does not accept documents (files such as PDFs); "
                                     "send their text instead", param=f"messages[{i}].content")


def _media_parts(message: Message) -> list[ImagePart | DocumentPart]:
    found: list[ImagePart | DocumentPart] = []
    for part in message.content:
        if isinstance(part, (ImagePart, DocumentPart)):
            found.append(part)
        elif isinstance(part, ToolResultPart):
            found.extend(p for p in part.content if isinstance(p, ImagePart))
    return found
