"""Loading saved lanewise blocks: errors that name the block and the problem, never a value.

A block that fails validation makes Prefect raise a RuntimeError chained to pydantic's
ValidationError, and that one prints the block's whole data for a missing field,
secrets included in clear. Every lanewise block is loaded here instead, so such an
error becomes a ConfigurationError that lists the fields and what is wrong with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from lanewise.errors import ConfigurationError

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from lanewise.settings import Settings

B = TypeVar("B", bound="Block")


def load_block(block_cls: type[B], name: str, setting: str) -> B:
    """The saved block `name` of type `block_cls`, which the setting `setting` names.

    Raises a ConfigurationError (without any of the block's values) when there is no
    such block or it does not hold valid values.
    """
    slug = block_cls.get_block_type_slug()
    where = f"the {slug} block {name!r} (named by LANEWISE_{setting.upper()})"
    try:
        # _sync: a plain call even inside an event loop (Prefect would return a coroutine).
        return block_cls.load(name, _sync=True)
    except ValueError as exc:
        # Prefect's message ("Unable to find block document named ...") holds no values.
        raise ConfigurationError(
            f"cannot load {where}: {exc}. Save one in the Prefect UI (Blocks) or with "
            f"{block_cls.__name__}(...).save({name!r}), or unset LANEWISE_{setting.upper()}"
        ) from None
    except RuntimeError as exc:
        cause = exc.__cause__
        if not isinstance(cause, ValidationError):
            raise ConfigurationError(f"cannot load {where}: {exc}") from None
        raise ConfigurationError(
            f"{where} does not hold valid values ({validation_problems(cause)}); edit it in "
            "the Prefect UI (Blocks) or save it again") from None


def validation_problems(error: ValidationError) -> str:
    """A ValidationError as `field: problem` pairs, without the values given."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'the block'}: {problem['msg']}"
        for problem in error.errors(include_url=False, include_input=False,
                                    include_context=False))


def settings_overrides(settings: Settings) -> dict[str, Any]:
    """The settings that the provider settings and storage blocks named by `settings` set."""
    from blocks.provider_settings import AnthropicSettings, OpenAISettings
    from blocks.storage import StorageSettings

    update: dict[str, Any] = {}
    for setting, block_cls in (("openai_settings_block", OpenAISettings),
                               ("anthropic_settings_block", AnthropicSettings),
                               ("storage_block", StorageSettings)):
        name = getattr(settings, setting)
        if name:
            update.update(load_block(block_cls, name, setting).settings_overrides())
    return update
