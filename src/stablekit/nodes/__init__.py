"""A ComfyUI-compatible node-graph engine: run API-format workflows ("Save (API Format)") on
stablekit's library functions.

    from stablekit.nodes import Engine, Folders, load_workflow
    engine = Engine(Folders(models="models", input="input", output="output"))
    result = engine.run(load_workflow("wf.json", sets=["6.text=a red star"]))
    result.images()     # [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]

Nodes keep ComfyUI's class, input and output names (NODE_CLASS_MAPPINGS); validation errors
have ComfyUI's {"error", "node_errors"} shape (WorkflowInvalid.response). See docs/workflows.md.
"""
from stablekit.nodes.executor import Engine, Interrupted, NodeFailed, RunResult
from stablekit.nodes.registry import NODE_CLASS_MAPPINGS, Folders, load_node_families, register
from stablekit.nodes.validate import WorkflowInvalid, validate_prompt
from stablekit.nodes.workflow import apply_sets, load_workflow, run_workflow

__all__ = ["Engine", "Folders", "Interrupted", "NODE_CLASS_MAPPINGS", "NodeFailed", "RunResult", "WorkflowInvalid",
           "apply_sets", "load_node_families", "load_workflow", "register", "run_workflow", "validate_prompt"]
