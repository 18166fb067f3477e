"""ConfigLoader: run the Lua config with PyLuaHelper, then validate it into a :class:`Config`."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO, cast

from python_lua_helper import PyLuaHelper

from llmgw.config.keys import check_distinct, keys_section
from llmgw.config.reader import Node, Reader
from llmgw.config.schema import Config, ConfigError
from llmgw.config.sections import models_section, server_section

logger = logging.getLogger(__name__)

_PRE_SCRIPT = Path(__file__).resolve().parent.parent / "pre.lua"
_EXPORTS = ("server", "models")

# Lines that PyLuaHelper's loader.lua prints on stdout (we capture it, see _run_lua).
_EXPORT_FAILED_RE = re.compile(r"^failed to export node '(.*)' with unsupported type '(\w+)'$")
_NOT_EXIST_RE = re.compile(r"^requested global variable or table with name \S+ is not exist$")
# "lua5.4: " / "/usr/bin/lua: " prefix the standalone interpreter puts before an uncaught error.
_INTERPRETER_RE = re.compile(r"^\S*lua[\w.-]*(?:\.exe)?: ", re.IGNORECASE)


def _lua_error(output: str) -> str | None:
    """The interpreter's one error message from the captured output, without the stack traceback."""
    head = output.split("stack traceback:", 1)[0]
    lines = head.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        match = _INTERPRETER_RE.match(lines[start])
        if match:
            message = " ".join([lines[start][match.end() :], *lines[start + 1 :]])
            message = " ".join(message.split())
            return message[:500] or None
    return None


def _restore_chunkname(message: str, full_path: str, shown: str) -> str:
    """Lua cuts long file names in messages to "...tail"; put the config path back as the user gave it."""
    if message.startswith(full_path + ":"):
        return shown + message[len(full_path) :]
    if message.startswith("..."):
        for start in range(len(full_path)):
            tail = full_path[start:]
            if message.startswith(f"...{tail}:"):
                return shown + message[3 + len(tail) :]
    return message


def _lua_failure(path: str, reason: str, output: str) -> str:
    if "detect compatible Lua" in reason:
        return (
            "no Lua interpreter found: install Lua 5.1-5.5 (for example the lua5.4 package) "
            "so that 'lua' or 'lua5.4' is on PATH"
        )
    if "timed out" in reason:
        return f"running {path} timed out (the Lua config must finish within 180 s)"
    message = _lua_error(output)
    if message:
        return f"Lua error: {_restore_chunkname(message, os.path.abspath(path), path)}"
    return f"cannot run {path}: {reason}"


def _split_output(output: str) -> tuple[dict[str, str], list[str]]:
    """Separate the loader's notes about unexportable values from what the config printed."""
    unsupported: dict[str, str] = {}
    printed: list[str] = []
    for line in output.splitlines():
        match = _EXPORT_FAILED_RE.match(line)
        if match:
            unsupported[match.group(1)] = match.group(2)
        elif line.strip() and not _NOT_EXIST_RE.match(line):
            printed.append(line)
    return unsupported, printed


class _ThreadCapture(io.TextIOBase):
    """Stand-in for sys.stdout: the loading thread's writes are kept, other threads' pass through."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target
        self._thread = threading.get_ident()
        self.captured = io.StringIO()

    def write(self, text: str) -> int:
        if threading.get_ident() == self._thread:
            return self.captured.write(text)
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()


_CAPTURE_LOCK = threading.Lock()  # one capture at a time: each restores the stdout it replaced


class ConfigLoader:
    """Loads and validates a Lua config file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Config:
        """Run the config with Lua and build a validated :class:`Config`; any problem is a ConfigError."""
        reader = self.reader()
        try:
            server_node = Node(reader, "server", "server")
            server = server_section(server_node)
            models = models_section(Node(reader, "models", "models"), server)
            keys = keys_section(server_node.child("keys"), models, os.path.dirname(os.path.abspath(self.path)))
            server = replace(server, keys=keys)
            places = {key.name: f"server.keys.{key.name}" for key in keys}
            places.update({f"api_keys[{i}]": f"server.api_keys[{i}]" for i in range(1, len(server.api_keys) + 1)})
            check_distinct(server.all_keys(), places)
        except ConfigError:
            raise
        except Exception as exc:  # a bug here must still surface as a config problem, not a crash
            logger.debug("unexpected error while validating %s", self.path, exc_info=True)
            raise ConfigError(f"cannot validate {self.path}: {type(exc).__name__}: {exc}") from exc
        return Config(path=self.path, server=server, models=models)

    def reader(self, exports: tuple[str, ...] = _EXPORTS) -> Reader:
        """Run the file with Lua and give typed access to the globals ``exports`` (for another
        file of the same kind: ``python -m llmgw agent`` reads its ``agent`` this way)."""
        if not os.path.isfile(self.path):
            raise ConfigError(f"config file not found: {self.path}")
        lua, output = self._run_lua(exports)
        unsupported, printed = _split_output(output)
        for line in printed:
            logger.debug("config output: %s", line)
        return Reader(lua, unsupported)

    def _run_lua(self, exports: tuple[str, ...]) -> tuple[Any, str]:
        """Run PyLuaHelper and return it with the output it printed (Lua's prints and error messages).

        PyLuaHelper raises a bare RuntimeError on failure and prints the interpreter's stderr
        to ``sys.stdout``: capturing that is how the ``file:line: message`` of a Lua error is
        recovered. Only this thread's writes are captured (reloads run in a worker thread).
        """
        config_path = os.path.abspath(self.path)
        with _CAPTURE_LOCK:
            original = sys.stdout
            capture = _ThreadCapture(original)
            sys.stdout = cast(TextIO, capture)
            try:
                lua = PyLuaHelper(
                    lua_config_script=config_path,
                    export_vars=list(exports),
                    pre_script=str(_PRE_SCRIPT),
                    work_dir=os.path.dirname(config_path),
                )
            except FileNotFoundError:
                raise ConfigError(f"config file not found: {self.path}") from None
            except RuntimeError as exc:
                raise ConfigError(_lua_failure(self.path, str(exc), capture.captured.getvalue())) from None
            except UnicodeDecodeError:
                raise ConfigError(f"{self.path}: a string value is not valid UTF-8") from None
            except Exception as exc:
                raise ConfigError(f"cannot load {self.path}: {type(exc).__name__}: {exc}") from exc
            finally:
                sys.stdout = original
        return lua, capture.captured.getvalue()
