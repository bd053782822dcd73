"""Workflow validation with ComfyUI's error shape (execution.py validate_prompt / validate_inputs).

`validate_prompt(prompt, folders)` returns (ok, error, good_outputs, node_errors, converted): the
same first four values as ComfyUI, so a server answers `{"error": error, "node_errors":
node_errors}` as ComfyUI's POST /prompt does, plus the prompt with widget values converted (INT,
FLOAT, STRING, BOOLEAN) as ComfyUI converts them in place. Error types are ComfyUI's
(invalid_prompt, prompt_no_outputs, prompt_outputs_failed_validation, required_input_missing,
bad_linked_input, return_type_mismatch, invalid_input_type, value_smaller_than_min,
value_bigger_than_max, value_not_in_list) plus one of ours: `dependency_cycle`, reported here
rather than at execution time as ComfyUI does (its graph.DependencyCycleError).
"""
from __future__ import annotations

import copy
import json
import math

from stablekit.errors import StablekitError
from stablekit.nodes.registry import Folders, node_class


class WorkflowInvalid(StablekitError):
    """A workflow that failed validation; `.response` is ComfyUI's {"error", "node_errors"} body."""

    def __init__(self, error: dict, node_errors: dict):
        self.response = {"error": error, "node_errors": node_errors}
        lines = [f"{error['message']}" + (f": {error['details']}" if error.get("details") else "")]
        for node_id, entry in node_errors.items():
            for e in entry["errors"]:
                lines.append(f"node {node_id} ({entry['class_type']}): {e['message']}: {e['details']}")
        text = "; ".join(line.replace("\n", "; ") for line in dict.fromkeys(lines))
        super().__init__(f"invalid workflow: {text}; fix the workflow (CLI: --set NODE.INPUT=VALUE)")


def _error(kind: str, message: str, details: str, **extra) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def input_spec(cls, folders: Folders) -> dict:
    """INPUT_TYPES with the engine's folders."""
    return cls.INPUT_TYPES(folders)


def _convert(input_type, val):
    if input_type == "INT":
        return int(val)
    if input_type == "FLOAT":
        number = float(val)
        if not math.isfinite(number):  # NaN passes every min/max comparison and poisons what follows
            raise ValueError(f"{val!r} is not a finite number")
        return number
    if input_type == "STRING":
        return str(val)
    if input_type == "BOOLEAN":
        return bool(val)
    return val


def _check_link(prompt, x, val, info) -> tuple[dict | None, str | None]:
    """(error, upstream id) for a linked input [node_id, slot]."""
    if len(val) != 2 or not isinstance(val[1], int) or isinstance(val[1], bool):
        return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                      f"{x}", input_name=x, input_config=info, received_value=val), None
    o_id = str(val[0])
    upstream = prompt.get(o_id)
    if upstream is None:
        return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                      f"{x}: node '{o_id}' does not exist", input_name=x, input_config=info, received_value=val), None
    returns = node_class(upstream["class_type"]).RETURN_TYPES
    if not 0 <= val[1] < len(returns):
        return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                      f"{x}: node '{o_id}' ({upstream['class_type']}) has no output {val[1]}",
                      input_name=x, input_config=info, received_value=val), None
    received = returns[val[1]]
    input_type = info[0]
    if received != input_type and "*" not in (received, input_type):
        return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                      f"{x}, received_type({received}) mismatch input_type({input_type})",
                      input_name=x, input_config=info, received_type=received, linked_node=val), None
    return None, o_id


def _check_value(x, val, info) -> tuple[dict | None, object]:
    """(error, converted value) for a widget value."""
    input_type, extra = info[0], (info[1] if len(info) > 1 else {})
    try:
        if isinstance(val, dict) and "__value__" in val:
            val = val["__value__"]
        val = _convert(input_type, val)
    except (TypeError, ValueError) as ex:
        return _error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                      f"{x}, {val}, {ex}", input_name=x, input_config=info, received_value=val,
                      exception_message=str(ex)), val
    if "min" in extra and val < extra["min"]:
        return _error("value_smaller_than_min", f"Value {val} smaller than min of {extra['min']}", f"{x}",
                      input_name=x, input_config=info, received_value=val), val
    if "max" in extra and val > extra["max"]:
        return _error("value_bigger_than_max", f"Value {val} bigger than max of {extra['max']}", f"{x}",
                      input_name=x, input_config=info, received_value=val), val
    if isinstance(input_type, list) and val not in input_type:
        listed = f"(list of length {len(input_type)})" if len(input_type) > 20 else str(input_type)
        return _error("value_not_in_list", "Value not in list", f"{x}: '{val}' not in {listed}", input_name=x,
                      input_config=info if len(input_type) <= 20 else None, received_value=val), val
    return None, val


def validate_inputs(prompt: dict, unique_id: str, validated: dict, folders: Folders, stack: tuple = ()) -> tuple:
    """(valid, errors, unique_id) for one node and, recursively, the nodes it links to."""
    if unique_id in validated:
        return validated[unique_id]
    node = prompt[unique_id]
    inputs = node["inputs"]
    spec = input_spec(node_class(node["class_type"]), folders)
    required, optional = spec.get("required", {}), spec.get("optional", {})
    errors, valid = [], True
    for x, info in {**required, **optional}.items():
        if x not in inputs:
            if x in required:
                errors.append(_error("required_input_missing", "Required input is missing", f"{x}", input_name=x))
            continue
        val = inputs[x]
        if isinstance(val, list):
            error, o_id = _check_link(prompt, x, val, info)
            if error is None and o_id in stack + (unique_id,):
                cycle = list(stack[stack.index(o_id):] if o_id in stack else ()) + [unique_id, o_id]
                error = _error("dependency_cycle", "Dependency cycle detected", f"{x}: {' -> '.join(cycle)}",
                               input_name=x, linked_node=val, cycle=cycle)
            if error is not None:
                errors.append(error)
                continue
            inputs[x] = [o_id, val[1]]
            if validate_inputs(prompt, o_id, validated, folders, stack + (unique_id,))[0] is False:
                valid = False
            continue
        error, inputs[x] = _check_value(x, val, info)
        if error is not None:
            errors.append(error)
    result = (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
    validated[unique_id] = result
    return result


def _shape_error(prompt) -> dict | None:
    """ComfyUI's invalid_prompt errors: not a node dict, a node without class_type, an unknown node."""
    if not isinstance(prompt, dict) or not prompt:
        return _error("invalid_prompt", "Cannot execute because the prompt is not a non-empty object of nodes",
                      f"got {type(prompt).__name__}")
    for x, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                          f"Node ID '#{x}'")
        if not isinstance(node["class_type"], str) or node_class(node["class_type"]) is None:
            return _error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                          f"Node ID '#{x}'")
        if not isinstance(node.get("inputs", {}), dict):
            return _error("invalid_prompt", "Cannot execute because a node's inputs are not an object.",
                          f"Node ID '#{x}'")
    return None


def validate_prompt(prompt, folders: Folders):
    """(ok, error, good_outputs, node_errors, converted prompt); see the module docstring."""
    shape = _shape_error(prompt)
    if shape is not None:
        return False, shape, [], {}, None
    prompt = {str(k): {**copy.deepcopy(v), "inputs": copy.deepcopy(v.get("inputs", {}))} for k, v in prompt.items()}
    outputs = [x for x, n in prompt.items() if getattr(node_class(n["class_type"]), "OUTPUT_NODE", False) is True]
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}, None
    good, failed, node_errors, validated = [], [], {}, {}
    for o in outputs:
        valid, reasons, _ = validate_inputs(prompt, o, validated, folders)
        if valid:
            good.append(o)
            continue
        failed.append((o, reasons))
        for node_id, (ok, node_reasons, _) in validated.items():
            if not ok and node_reasons:  # nodes downstream of an error carry none themselves
                entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                if o not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failed for e in errors)
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), \
            [], node_errors, None
    return True, None, good, node_errors, prompt


def check_prompt(prompt, folders: Folders) -> tuple[dict, list[str]]:
    """The converted prompt and its valid outputs, or WorkflowInvalid (one line; `.response` for servers).

    As ComfyUI, outputs that fail validation are left out while valid ones run."""
    ok, error, good, node_errors, converted = validate_prompt(prompt, folders)
    if not ok:
        raise WorkflowInvalid(error, node_errors)
    return converted, good


def dumps(response: dict) -> str:
    return json.dumps(response, indent=2, default=str)
