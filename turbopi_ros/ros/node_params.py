"""turbopi_node's parameters (PARAMETERS: names, defaults, descriptions, ranges; `ros2 param describe` shows them), the
checks across them, and the Policy a configuration (node_config.NodeConfig, built from them) asks for. Reading a
parameter file (params_file.py) needs this module only, not the node or torch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import numpy as np

from ..model.rtc import DEFAULT_MAX_GUIDANCE
from ..policy.jump_limit import JumpLimit
from ..policy.policy import IMAGE_KEYS, RANDOM_WEIGHTS
from .parameters import Param
from .robot_params import ROBOT_PARAMETERS, policy_kwargs

if TYPE_CHECKING:
    from ..policy.policy import Policy
    from .node_config import NodeConfig

PARAMETERS: Dict[str, Param] = {
    "model.checkpoint": Param("", "openpi PyTorch checkpoint directory or .safetensors file, or 'random' for seeded "
                                  "random weights of model.preset (demos and tests only: the actions are meaningless)",
                              required=True),
    "model.preset": Param("tiny", "model config preset (pi0, pi05, tiny, tiny_pi05) or a model config JSON path"),
    "model.device": Param("cpu", "torch device", pattern=r"cpu|cuda(:\d+)?", pattern_text="cpu, cuda or cuda:N"),
    "model.dtype": Param("float32", "compute dtype (bfloat16 pays on GPU; fp8: bfloat16 with FP8 linear weights; "
                                    "fp8_weights: bfloat16 with the action expert's weights alone in FP8, half the "
                                    "denoise's weight reads; both on GPUs of compute capability >= 8.9 only)",
                         choices=("float32", "bfloat16", "fp8", "fp8_weights")),
    "model.num_steps": Param(10, "flow-matching Euler steps", min=1, max=1000),
    "model.seed": Param(0, "seed of the random weights (if any) and of the noise", min=0, max=2**31 - 1),
    "model.tokenizer": Param("", "PaliGemma SentencePiece model file; '' only with random weights"),
    "model.norm_stats": Param("", "norm_stats.json; '' = the checkpoint's assets/<asset_id>/norm_stats.json (the "
                                  "only one; an asset id may span folders); 'none': no normalization (real weights "
                                  "without norm stats are refused otherwise)"),
    "model.cuda_graph": Param(True, "on CUDA, replay the encoding and the denoise as CUDA graphs, every prompt length "
                                    "the configuration can produce captured before the node is ready"),
    "model.fused": Param(False, "the fused layer kernels (model/fused.py: norms with the residual add, rotary, the "
                                "GELU gate; Triton on CUDA, plain-torch twins elsewhere) for vision, prefix and "
                                "denoise, and real-time chunking's guided denoise (with their backwards)"),
    "model.few_rows_matmul": Param(False, "with model.fused, on a GPU: the denoise's matmuls (the action expert's, "
                                          "with rotary or the norm after and the gate before fused in, the float32 "
                                          "action heads), and pi0's state token's in the prefix cache, through "
                                          "model/few_rows_matmul.py's split-K kernels; each "
                                          "shape measures them against cuBLAS during the warm-up and keeps the "
                                          "faster (not yet measured on a GPU)"),
    "model.pdl": Param(False, "with model.fused, on a GPU of compute capability >= 9.0 (Hopper, Blackwell, Jetson "
                              "Thor): launch the fused kernels with programmatic dependent launch, so that each "
                              "starts while the one before it ends (model/fused.py use_pdl; the same values; not yet "
                              "measured on a GPU)"),
    "model.compile": Param(False, "torch.compile one denoise step (inductor): the first start on a machine compiles "
                                  "(minutes, before the node is ready), later ones load from model.cache_dir"),
    "model.cache_dir": Param("", "inductor's cache directory for model.compile (created if missing), so a warm start "
                                 "takes seconds; '' = inductor's default (a temporary directory: lost on reboot); on "
                                 "a GPU also the split kernels' measured choices (kernel_choices.json)"),
    "model.warm_up_prompts": Param([], "other prompts the robot will be given at run time (prompt, ~/prompt): with "
                                       "graphs, their prompt lengths are captured before ready too, so switching to "
                                       "one captures nothing; another prompt waits for its captures at the switch",
                                       items=str),
    "model.num_threads": Param(0, "torch CPU threads for inference (0 = torch's default)", min=0, max=1024),
    **ROBOT_PARAMETERS,  # robot.adapter, robot.adapt_to_pi, model.action_horizon / max_token_len / discrete_state_input
    "cameras.names": Param([], "model image slots fed by the camera topics, in the same order (with robot.adapter "
                               "also openpi's robot camera names)", required=True, items=str, choices=None),
    "cameras.topics": Param([], "camera topics, one per cameras.names entry", required=True, items=str),
    "cameras.compressed": Param([], "per camera: sensor_msgs/CompressedImage instead of Image ([] = all raw)",
                                items=bool),
    "cameras.preprocess": Param("exact", "exact: openpi's resize, bit for bit; fast: reduced JPEG decoding and "
                                         "OpenCV's resize (not bit-exact: docs/preprocessing.md)",
                                choices=("exact", "fast")),
    "cameras.prepare_on_arrival": Param(True, "prepare each camera frame as it arrives (a thread per camera), so an "
                                              "observation's images are ready when it is taken: lower latency, CPU "
                                              "per frame; false = when the observation is taken"),
    "joint_states.topic": Param("/joint_states", "sensor_msgs/JointState topic", required=True),
    "state.joints": Param([], "joint names, in the order of the model's state vector", required=True, items=str),
    "action.joints": Param([], "joint names of the first N action dims (published chunks and commands)",
                           required=True, items=str),
    "action.lower_limits": Param([], "per action joint lower limit (one per action.joints entry)", required=True,
                                 items=float),
    "action.upper_limits": Param([], "per action joint upper limit (one per action.joints entry)", required=True,
                                 items=float),
    "action.delta_mask": Param([], "per action joint: true where the model outputs deltas from the state (the state "
                                   "of the same index is added); all false = all absolute; [] = robot.adapter's openpi "
                                   "default (none: all absolute)", items=bool),
    "action.max_jump": Param([], "per action joint: the largest distance of a chunk's first action from the joint's "
                                 "observed position (state.joints of the same name); a chunk that jumps further is "
                                 "dropped as an error (a mismatched checkpoint, norm stats, adapter or units); 0 = "
                                 "that joint unchecked; [] = no check", items=float, min=0.0),
    "action.groups": Param([], "action groups, one per controller, each with its own trajectory and command topics "
                               "(parameters action.group.<name>.*, action_outputs.py); [] = one ~/action_chunk and "
                               "~/joint_command for all action joints", items=str),
    "action.halt_on_stop": Param(False, "on ~/enable false, deactivate and shutdown, stop the chunk a trajectory "
                                        "controller is following: ~/action_chunk (each group's trajectory topic "
                                        "with groups) gets a one-point JointTrajectory, stamped 0 (from its "
                                        "arrival), that brakes to a stop over action.halt_time_s; false: that "
                                        "chunk runs to its end"),
    "action.halt_time_s": Param(0.25, "with action.halt_on_stop: the halt's one point comes this long after it "
                                      "arrives, with zero velocity, where the chunk is halfway there, so a joint at "
                                      "the chunk's speed v brakes evenly at v / halt_time_s", min=0.01, max=10.0),
    "prompt": Param("", "task instruction (also settable by publishing on ~/prompt)", runtime=True),
    "control_rate_hz": Param(50.0, "the model's action rate: spacing of chunk points (a property of the "
                                   "checkpoint's training data)", min=0.1, max=1000.0),
    "command_rate_hz": Param(0.0, "rate of ~/joint_command, sampling the chunk by interpolation; 0 = the rate the "
                                  "robot publishes joint states at, measured", min=0.0, max=1000.0),
    "inference_period_s": Param(0.0, "0 = infer back to back; > 0 = start an inference at most this often",
                                runtime=True, min=0.0, max=3600.0),
    "blend_s": Param(0.1, "seconds over which a new chunk takes over from the old one (in the commands and the "
                          "group trajectories)", runtime=True, min=0.0,
                     max=10.0),
    "rtc.enabled": Param(False, "real-time chunking: guide each denoise towards the chunk being executed",
                         runtime=True),
    "rtc.max_guidance": Param(DEFAULT_MAX_GUIDANCE, "real-time chunking's guidance clip (the paper's beta)",
                              runtime=True, min=0.01, max=100.0),
    "max_observation_age_s": Param(0.5, "inputs older than this are stale: no inference on them", min=0.001,
                                   max=3600.0),
    "on_stale": Param("stop", "when inputs go stale or inference fails: stop the commands or hold the last one",
                      choices=("stop", "hold")),
    "worker_niceness": Param(10, "Linux CPU priority (niceness) of the preparing, inference and camera threads: 10 "
                                 "lets the command stream and the executor take the cores first; lower it (0: the "
                                 "node's own) where other processes at normal priority share the cores and would "
                                 "otherwise starve the inference (docs/reliability.md)", min=0, max=19),
    "autostart": Param(True, "publish right away; false = wait for ~/enable"),
    "status_log_period_s": Param(5.0, "seconds between one-line status logs (0 = off)", min=0.0, max=3600.0),
}


def check_model(p: Dict[str, object]) -> None:
    """Model switches that need another one."""
    if p["model.few_rows_matmul"] and not p["model.fused"]:
        raise ValueError("parameter model.few_rows_matmul runs in the fused denoise: set model.fused: true too "
                         "(or model.few_rows_matmul: false)")
    if p["model.pdl"] and not p["model.fused"]:
        raise ValueError("parameter model.pdl launches the fused kernels: set model.fused: true too (or model.pdl: "
                         "false)")


def check_lengths(p: Dict[str, object]) -> None:
    """The list parameters that go together have matching lengths, and the limits are ordered."""
    n_cam, n_act = len(p["cameras.names"]), len(p["action.joints"])
    for name, want, what in (("cameras.topics", n_cam, "cameras.names"),
                             ("action.lower_limits", n_act, "action.joints"),
                             ("action.upper_limits", n_act, "action.joints")):
        if len(p[name]) != want:
            raise ValueError(f"parameter {name} has {len(p[name])} entries for {want} {what}: one per entry "
                             f"of {what} is required")
    for name, want, what in (("cameras.compressed", n_cam, "cameras.names"),
                             ("action.delta_mask", n_act, "action.joints")):
        if p[name] and len(p[name]) != want:
            raise ValueError(f"parameter {name} has {len(p[name])} entries for {want} {what} (or leave it [])")
    lower, upper = np.array(p["action.lower_limits"]), np.array(p["action.upper_limits"])
    bad = [j for j, lo, hi in zip(p["action.joints"], lower, upper) if not lo <= hi]
    if bad:
        raise ValueError(f"action limits: lower > upper (or NaN) for {bad}")
    JumpLimit(p["action.joints"], p["state.joints"], p["action.max_jump"])  # raises what is wrong with it


def loading_message(config: "NodeConfig") -> str:
    """The log line before the (long) model load."""
    m = config.model
    what = f"random weights of {m.preset}" if m.checkpoint == RANDOM_WEIGHTS else m.checkpoint
    return f"loading {what} on {m.device}"


def policy_from_config(config: "NodeConfig") -> "Policy":
    """The Policy that the node's configuration asks for; turbopi-replay builds it here too, so that what replays is
    what would run."""
    from ..model import fused  # torch: only when a policy is built
    from ..policy.loading import load_policy

    m, a = config.model, config.action
    try:  # the process's kernel launches: before the (long) load, and before the warm-up captures a graph
        fused.use_pdl(m.pdl, m.device)
    except RuntimeError as e:
        raise ValueError(f"parameter model.pdl: {e}") from None
    policy = load_policy(
        checkpoint=m.checkpoint, preset=m.preset, device=m.device, dtype=m.dtype, tokenizer=m.tokenizer,
        norm_stats=m.norm_stats, seed=m.seed, num_steps=m.num_steps, action_dims=len(a.joints), image_keys=IMAGE_KEYS,
        delta_mask=list(a.delta_mask) or None, lower_limits=list(a.lower_limits), upper_limits=list(a.upper_limits),
        cuda_graph=m.cuda_graph, preprocess_mode=config.cameras.preprocess, **policy_kwargs(config))
    policy.model.use_fused(m.fused, few_rows_matmul=m.few_rows_matmul)  # before compiling: it traces one path
    if m.cache_dir:  # the split kernels' measured choices (GPU): loaded now, saved as the warm-up makes them
        from ..model.kernel_choice import CHOICES
        CHOICES.persist(m.cache_dir, policy.model.device)
    if m.compile:  # compiled lazily: the node's warm-up (warm_up.py) is the first call
        policy.model.compile_denoise(cache_dir=m.cache_dir or None)
    n, mask = len(config.state.joints), policy.actions.delta_mask
    if n > policy.config.action_dim:
        raise ValueError(f"{n} state.joints exceed the model's {policy.config.action_dim} state dims")
    if policy.adapter is None and mask is not None and len(mask) > n:  # else every observation would be refused
        raise ValueError(f"action.delta_mask has {len(mask)} entries but state.joints only {n}: the state of the same "
                         f"index is added to each action it marks (expected at most {n} entries)")
    return policy
