"""The ``--model`` contract of ``ckprof sweep``: what the user's factory returns, how
the batch reaches the model and the loss, and one-line errors when the user's code
fails (torch imported inside functions only).

Contract::

    MODEL_CONTRACT                     the contract in words (--help, README)
    build_workload(make_model, make_batch, loss_fn, batch_size, name) -> Workload
    Workload.forward_loss() -> loss    model(batch) then loss_fn(output, batch)
    default_loss(output, batch)        the loss when the factory gives none
    call_user(name, call, fn, *args, passthrough=...)   run user code, errors -> one line

# NOTE [ The --model contract ]
# ``build(batch_size=N)`` (the keyword is optional: it is passed only when the function
# accepts it) returns ``(model, batch, loss_fn)``; ``loss_fn`` may be None. Or the
# Python API gets ``make_model()`` -> model and ``make_batch(batch_size)`` -> batch.
# The batch decides how the model is called:
#   - a tensor ``x``                  -> ``model(x)``
#   - a tuple/list ``(inputs, target)`` -> ``model(inputs)``; ``inputs`` that is itself a
#     tuple/list is spread: ``model(*inputs)`` (several inputs: ``((x1, x2), y)``)
#   - a tuple/list of one element ``(x,)`` -> ``model(x)``
#   - a dict (HF style: input_ids, attention_mask, labels) -> ``model(**batch)``
# and the loss is ``loss_fn(output, batch)`` with the batch exactly as returned. Without
# loss_fn (``default_loss``): ``output.loss`` (HF with labels) / ``output["loss"]``; a
# scalar output itself; with a target ``y``: cross entropy when ``y`` holds class
# indices for the last dimension of the output, mean squared error when it has the
# output's shape; else the mean of the output's squares (a stand-in that exercises
# backward). A tuple of 3+ elements is ambiguous and refused with a one-line error.
# Any exception in the user's code (build, the model, the loss, backward) becomes a
# :class:`UserCodeError`: one line naming the function, the call that failed, the
# exception and where in the user's code it was raised; the original is its
# ``__cause__`` (Python users keep the traceback, the CLI shows one line).
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ckprof.errors import CkprofError

__all__ = ["MODEL_CONTRACT", "UserCodeError", "Workload", "build_workload", "call_user", "default_loss"]

MODEL_CONTRACT = (
    "--model module:function names a function build(batch_size=N) (the keyword is passed only when "
    "build accepts it) returning (model, batch, loss_fn). The model must not checkpoint by itself: "
    "the sweep applies each policy to its repeated blocks. The batch decides the call: a tensor x -> "
    "model(x); a tuple (inputs, target) -> model(inputs) (inputs a tuple -> model(*inputs)); a dict "
    "(e.g. HF input_ids, attention_mask, labels) -> model(**batch). The loss is loss_fn(output, batch) "
    "with the batch as returned; loss_fn None -> output.loss (HF with labels), a scalar output itself, "
    "cross entropy / MSE against the target, else the mean of the output's squares."
)


class UserCodeError(CkprofError):
    """An exception inside the user's model code, as one line (exit code 1)."""


_OWN_PARTS = (os.sep + "torch" + os.sep, os.sep + "ckprof" + os.sep, "<frozen ", os.sep + "click" + os.sep)


def _where(err: BaseException) -> str:
    """``file.py:12 in forward``: the innermost frame outside torch / ckprof / stdlib."""
    frames = traceback.extract_tb(err.__traceback__)
    for frame in reversed(frames):
        name = frame.filename
        if not any(part in name for part in _OWN_PARTS) and "site-packages" not in name \
                and "/lib/python" not in name:
            return f"{os.path.basename(name)}:{frame.lineno} in {frame.name}"
    return ""


def call_user(name: str, call: str, fn: Callable[..., Any], *args: Any,
              passthrough: Callable[[BaseException], bool] | None = None, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` (user code); an exception becomes a one-line
    :class:`UserCodeError` naming ``name`` (the --model function) and ``call`` (what
    ckprof called), unless ``passthrough(err)`` says to let it through unchanged (an
    out-of-memory, which the sweep handles)."""
    try:
        return fn(*args, **kwargs)
    except CkprofError:
        raise
    except Exception as err:
        if passthrough is not None and passthrough(err):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        if len(first) > 200:
            first = first[:197] + "..."
        where = _where(err)
        raise UserCodeError(
            f"{name}: {call} failed: {type(err).__name__}: {first}"
            + (f" (at {where})" if where else ""),
            hint="See the --model contract in `ckprof sweep --help`",
        ) from err


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _takes_positional(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _leading_size(x: Any) -> int | None:
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return None


def batch_size_of(batch: Any) -> int | None:
    """Rows of the batch: the first dimension of the first tensor found in it."""
    if isinstance(batch, Mapping):
        for value in batch.values():
            n = batch_size_of(value)
            if n is not None:
                return n
        return None
    if isinstance(batch, (tuple, list)):
        for value in batch:
            n = batch_size_of(value)
            if n is not None:
                return n
        return None
    return _leading_size(batch)


def model_inputs(batch: Any, name: str) -> tuple[tuple[Any, ...], dict[str, Any], str]:
    """(args, kwargs, call text) for calling the model on ``batch`` (NOTE above)."""
    if isinstance(batch, Mapping):
        return (), dict(batch), "model(**batch)"
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return (batch[0],), {}, "model(batch[0])"
        if len(batch) == 2:
            inputs = batch[0]
            if isinstance(inputs, (tuple, list)):
                return tuple(inputs), {}, "model(*inputs) with batch = (inputs, target)"
            if isinstance(inputs, Mapping):
                return (), dict(inputs), "model(**inputs) with batch = (inputs, target)"
            return (inputs,), {}, "model(x) with batch = (x, y)"
        raise UserCodeError(
            f"{name}: the batch is a {type(batch).__name__} of {len(batch)} elements; ckprof cannot tell "
            "inputs from target",
            hint="Return (inputs, target), a tensor, or a dict (see `ckprof sweep --help`)",
        )
    return (batch,), {}, "model(batch)"


def _target(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[1]
    return None


def default_loss(output: Any, batch: Any) -> Any:
    """The loss when the factory gives none (NOTE [ The --model contract ])."""
    import torch
    import torch.nn.functional as F

    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is not None:
        return loss
    if isinstance(output, Mapping):
        output = next((v for v in output.values() if isinstance(v, torch.Tensor)), None)
    elif isinstance(output, (tuple, list)):
        output = output[0]
    elif hasattr(output, "logits"):
        output = output.logits
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"cannot make a loss from a model output of type {type(output).__name__}; give loss_fn")
    if output.dim() == 0:
        return output
    y = _target(batch)
    if isinstance(y, torch.Tensor):
        if not y.is_floating_point() and y.dim() == output.dim() - 1 and y.shape == output.shape[:-1]:
            return F.cross_entropy(output.reshape(-1, output.shape[-1]).float(), y.reshape(-1))
        if y.shape == output.shape:
            return F.mse_loss(output.float(), y.float())
    return output.float().square().mean()


@dataclass(frozen=True)
class Workload:
    """A model, its batch and loss, and the name of the factory (for messages)."""

    model: Any
    batch: Any
    loss_fn: Callable[[Any, Any], Any]
    batch_size: int | None
    name: str

    def to(self, device: Any) -> Workload:
        import dataclasses

        return dataclasses.replace(self, model=self.model.to(device), batch=_to(self.batch, device))

    def forward_loss(self, passthrough: Callable[[BaseException], bool] | None = None) -> Any:
        """``loss_fn(model(batch), batch)``, each call's errors as one line."""
        args, kwargs, call = model_inputs(self.batch, self.name)
        output = call_user(self.name, call, self.model, *args, passthrough=passthrough, **kwargs)
        return call_user(self.name, "loss_fn(output, batch)", self.loss_fn, output, self.batch,
                         passthrough=passthrough)

    def train_step(self, optimizer: Any, passthrough: Callable[[BaseException], bool] | None = None) -> None:
        """zero_grad, forward + loss, backward, optimizer step."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.forward_loss(passthrough)
        if not hasattr(loss, "backward"):
            raise UserCodeError(f"{self.name}: loss_fn(output, batch) returned a {type(loss).__name__}, not a "
                                "tensor", hint="Return a scalar tensor")
        call_user(self.name, "loss.backward()", loss.backward, passthrough=passthrough)
        call_user(self.name, "optimizer.step()", optimizer.step, passthrough=passthrough)


def _to(x: Any, device: Any) -> Any:
    if isinstance(x, Mapping):
        return type(x)({k: _to(v, device) for k, v in x.items()}) if isinstance(x, dict) else \
            {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    return x.to(device) if hasattr(x, "to") and hasattr(x, "shape") else x


def factory_name(obj: Any) -> str:
    """'module:function' text of a factory, for messages."""
    if isinstance(obj, str):
        return obj
    module = getattr(obj, "__module__", None) or "?"
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}:{qual}"


def build_workload(make_model: Callable[..., Any], make_batch: Callable[..., Any] | None,
                   loss_fn: Callable[..., Any] | None, batch_size: int | None,
                   name: str | None = None) -> Workload:
    """Call the user's factories per the contract (NOTE [ The --model contract ])."""
    label = name or factory_name(make_model)
    if batch_size is not None and make_batch is None and _accepts(make_model, "batch_size"):
        built = call_user(label, f"build(batch_size={batch_size})", make_model, batch_size=batch_size)
    else:
        built = call_user(label, "build()", make_model)
    batch: Any = None
    if isinstance(built, tuple):
        if len(built) != 3:
            raise UserCodeError(f"{label} returned a tuple of {len(built)}, not (model, batch, loss_fn)",
                                hint="See the --model contract in `ckprof sweep --help`")
        model, batch, built_loss = built
        loss_fn = loss_fn or built_loss
    else:
        model = built
    if not hasattr(model, "parameters") or not callable(model):
        raise UserCodeError(f"{label} returned a {type(model).__name__} as the model, not an nn.Module",
                            hint="Return (model, batch, loss_fn)")
    if make_batch is not None:
        bname = factory_name(make_batch)
        if batch_size is not None and (_accepts(make_batch, "batch_size") or _takes_positional(make_batch)):
            batch = call_user(bname, f"make_batch({batch_size})", make_batch, batch_size)
        else:
            batch = call_user(bname, "make_batch()", make_batch)
    if batch is None:
        raise UserCodeError(f"{label}: no batch", hint="Return (model, batch, loss_fn), or pass make_batch")
    return Workload(model=model, batch=batch, loss_fn=loss_fn or default_loss,
                    batch_size=batch_size_of(batch) or batch_size, name=label)
