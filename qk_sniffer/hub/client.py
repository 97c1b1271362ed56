"""The Hugging Face Hub client, shared by publishing and by loading a capture back from the Hub.

``huggingface_hub`` is imported lazily. ``API_FACTORY`` builds the client and is the seam tests use to put
a recording stand-in in place of ``HfApi``. The token goes to the client and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..core.errors import UserError

REPO_TYPE = "dataset"


def _default_api(token: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


# token -> client. Tests replace it with a recording stand-in of HfApi.
API_FACTORY: Callable[[str], Any] = _default_api


def find_token() -> str | None:
    """``HF_TOKEN``, else ``HF_TOKEN`` in a ``.env`` file (searched from the working dir up), else the token
    saved by ``hf auth login``. The .env is read, not loaded: nothing else in the process sees it."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    from dotenv import dotenv_values, find_dotenv

    env_file = find_dotenv(usecwd=True)
    token = dotenv_values(env_file).get("HF_TOKEN") if env_file else None
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def redact(text: str, token: str | None) -> str:
    """``text`` with the token replaced: no message, log or file ever shows it."""
    return text.replace(token, "<token>") if token else text


def describe(exc: BaseException) -> str:
    """One line saying why a Hub call failed."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return "the Hub is offline (HF_HUB_OFFLINE is set)"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if status == 401:
            return f"the token was rejected ({first_line})"
        if status == 403:
            return f"no write access ({first_line})"
        return f"the Hub answered HTTP {status} ({first_line})"
    from huggingface_hub import constants

    return f"cannot reach {constants.ENDPOINT} ({type(exc).__name__}: {exc})"
