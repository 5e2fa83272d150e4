"""peer.py — the "peer figure" for sluice's CUDA engine: what PyTorch + Hugging Face
transformers reach on the same GPU for Llama shapes in BF16 with random weights (speed does
not depend on weight values; nothing is downloaded: the model is built from a config).

For each --shape and each attention mode in --modes:
  eager                 attn_implementation "eager", dynamic KV cache
  sdpa                  attn_implementation "sdpa", dynamic KV cache
  sdpa+static-compile   "sdpa", cache_implementation="static" and the decoding forward
                        torch.compile'd with mode="reduce-overhead" (CUDA graphs), through
                        generate's compile_config where this transformers has it, else by
                        compiling model.forward by hand
figures:
  decode   model.generate, greedy, --prompt random prompt tokens, --gen new tokens
           (min_new_tokens = max_new_tokens, no EOS), at each of --batches.
           TTFT = time of the same generate with max_new_tokens=1;
           decode tok/s = batch*gen / (total generate time - TTFT).
           One warm-up per configuration (for the compiled mode it covers compilation).
  prefill  one forward of a --prefill long prompt at batch 1 with use_cache=True (logits of
           the last position only, as generate does, unless --full-logits), median of
           --prefill-reps after a warm-up. For the compiled mode the forward is
           torch.compile'd with --prefill-compile-mode (generate itself never compiles the
           prefill).
Every configuration is timed between torch.cuda.synchronize() calls; a failing one
(out of memory included) is recorded with its error and the run goes on. After --budget-s
seconds on a shape the configurations not yet started are recorded as "skipped: budget".
Configurations run in priority order (--order batch): eager/sdpa prefill, then decode batch
by batch across the modes, then the compiled mode's prefill.

Writes JSON (--json PATH, rewritten after every configuration; stdout at the end when not
given) and prints a table at the end; progress goes to stderr. torch and transformers are
imported inside main(), so --help works without them.
  python3 bench/gpu/peer.py --shape llama-3.1-8b --json /tmp/peer-8b.json --budget-s 540
"""
import argparse
import contextlib
import datetime
import gc
import inspect
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback

SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, intermediate_size=8192,
                         vocab_size=128256, tie_word_embeddings=True, bos_token_id=128000),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, intermediate_size=14336,
                         vocab_size=128256, tie_word_embeddings=False, bos_token_id=128000),
    # A toy shape, only to smoke-test this script (e.g. with --device cpu); not a figure.
    "tiny-test": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, intermediate_size=512,
                      vocab_size=1024, tie_word_embeddings=True, bos_token_id=1),
}
DEFAULT_SHAPES = ["llama-3.2-1b", "llama-3.1-8b"]
COMMON = dict(max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
              attention_bias=False, mlp_bias=False, eos_token_id=None, pad_token_id=None)
ROPE_THETA = 500000.0
ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
MODES = ("eager", "sdpa", "sdpa+static-compile")
COMPILED = "sdpa+static-compile"

T0 = time.perf_counter()


def log(msg):
    print(f"bench/gpu/peer [{time.perf_counter() - T0:7.1f}s]: {msg}", file=sys.stderr, flush=True)


def int_list(text):
    try:
        out = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not out or any(x <= 0 for x in out):
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch + transformers decode/prefill throughput for Llama shapes "
                    "(BF16, random weights): the peer figure for sluice's CUDA engine.",
        epilog="Example: python3 bench/gpu/peer.py --shape llama-3.2-1b --json out.json")
    p.add_argument("--shape", action="append", metavar="NAME",
                   help=f"model shape, repeatable or comma-separated: {', '.join(SHAPES)} "
                        f"(default: {','.join(DEFAULT_SHAPES)}; tiny-test is a smoke test only)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated attention modes from {','.join(MODES)} (default: all)")
    p.add_argument("--batches", type=int_list, default=[1, 8, 32, 64, 128, 256],
                   help="decode batch sizes (default 1,8,32,64,128,256)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens for decode (default 128)")
    p.add_argument("--gen", type=int, default=256, help="generated tokens (default 256)")
    p.add_argument("--prefill", type=int_list, default=[512, 2048],
                   help="prefill prompt lengths at batch 1 (default 512,2048)")
    p.add_argument("--prefill-reps", type=int, default=5, help="timed prefill repeats (default 5)")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="seconds per shape after which configurations not yet started are "
                        "skipped (default 240)")
    p.add_argument("--order", choices=("batch", "mode"), default="batch",
                   help="batch: decode batch by batch across modes, cheap prefill first, "
                        "compiled prefill last (default); mode: one mode after the other")
    p.add_argument("--warmup-gen", type=int, default=0,
                   help="new tokens of the decode warm-up for eager/sdpa (default 0: same as "
                        "--gen); the compiled mode always warms up at full length, since its "
                        "static cache size depends on it")
    p.add_argument("--prefill-compile-mode", default="default",
                   help="torch.compile mode for the compiled mode's prefill forward "
                        "(default 'default'; 'none' = no compile)")
    p.add_argument("--compile-path", choices=("auto", "generate", "manual"), default="auto",
                   help="how the compiled mode compiles: generate = compile_config passed to "
                        "generate (transformers' own path), manual = model.forward = "
                        "torch.compile(...); auto = generate where available (default)")
    p.add_argument("--fullgraph", action="store_true",
                   help="compile the decoding forward with fullgraph=True (default: library default)")
    p.add_argument("--static-shapes", action="store_true",
                   help="compile the decoding forward with dynamic=False: one compilation per batch "
                        "size (default: the library's default, which in transformers 5.x lets dynamo "
                        "make the batch dimension dynamic after the first recompilation)")
    p.add_argument("--full-logits", action="store_true",
                   help="prefill computes logits for every position (default: last only)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and prompts")
    p.add_argument("--json", metavar="PATH", help="write JSON here (default: stdout at the end)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test the script")
    p.add_argument("--hf-verbose", action="store_true", help="keep transformers' warnings")
    a = p.parse_args(argv)
    shapes = []
    for item in a.shape or DEFAULT_SHAPES:
        for s in item.split(","):
            s = s.strip()
            if not s:
                continue
            if s not in SHAPES:
                p.error(f"unknown shape {s!r}; choices: {', '.join(SHAPES)}")
            if s not in shapes:
                shapes.append(s)
    a.shapes = shapes
    modes = []
    for m in a.modes.split(","):
        m = m.strip()
        if not m:
            continue
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choices: {', '.join(MODES)}")
        if m not in modes:
            modes.append(m)
    if not modes:
        p.error("no mode given")
    a.mode_list = modes
    if a.prompt < 1 or a.gen < 1 or a.prefill_reps < 1:
        p.error("--prompt, --gen and --prefill-reps must be positive")
    return a


# ---------------------------------------------------------------- helpers

def fnum(x, nd=3):
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    if math.isnan(x) or math.isinf(x):
        return None
    return round(x, nd)


def err_text(e, limit=2000):
    s = f"{type(e).__name__}: {e}"
    return s if len(s) <= limit else s[:limit] + " ..."


def accepts(cls, name):
    if name in (getattr(cls, "__dataclass_fields__", None) or {}):
        return True
    try:
        return name in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def rope_info(cfg):
    """(rope_theta, rope_type) as the config holds them, old or new style."""
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        if "rope_type" not in rp and "rope_theta" not in rp:
            first = next(iter(rp.values()))
            if isinstance(first, dict):
                rp = first
        return rp.get("rope_theta"), rp.get("rope_type", rp.get("type"))
    rs = getattr(cfg, "rope_scaling", None) or {}
    return getattr(cfg, "rope_theta", None), rs.get("rope_type", rs.get("type"))


def gpu_info(torch, device):
    info = {"device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            prop = torch.cuda.get_device_properties(torch.cuda.current_device())
            info.update(name=prop.name, capability=f"{prop.major}.{prop.minor}",
                        total_memory_gib=fnum(prop.total_memory / 2**30, 2),
                        multiprocessors=prop.multi_processor_count)
        except Exception as e:
            info["error"] = err_text(e)
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=15)
            if r.returncode == 0 and r.stdout.strip():
                info["driver"] = r.stdout.strip().splitlines()[0]
        except Exception:
            pass
    else:
        info["name"] = platform.processor() or "cpu"
    return info


class Bench:
    """What every configuration needs: torch, the args, the device and its sync."""

    def __init__(self, torch, transformers, args):
        self.torch = torch
        self.transformers = transformers
        self.args = args
        self.device = args.device
        self.cuda = args.device.startswith("cuda")
        self.oom_types = tuple(t for t in (getattr(torch.cuda, "OutOfMemoryError", None),
                                           getattr(torch, "OutOfMemoryError", None)) if t)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t, out

    def is_oom(self, e):
        return (self.oom_types and isinstance(e, self.oom_types)) or "out of memory" in str(e).lower()

    def cleanup(self):
        gc.collect()
        if self.cuda:
            try:
                self.torch.cuda.empty_cache()
            except Exception:
                pass

    def reset_peak(self):
        if self.cuda:
            try:
                self.torch.cuda.reset_peak_memory_stats()
            except Exception:
                pass

    def peak_gib(self):
        if self.cuda:
            try:
                return fnum(self.torch.cuda.max_memory_allocated() / 2**30, 2)
            except Exception:
                return None
        return None


def compiled_graphs(torch):
    """How many graphs dynamo has compiled so far (None where it can't be read)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return None


def cudagraph_skips(torch):
    try:
        from torch._dynamo.utils import counters
        return int(counters["inductor"]["cudagraph_skips"])
    except Exception:
        return None


def raise_recompile_limits(torch):
    """Each decode batch size is a fresh compilation (static shapes): allow many."""
    done = {}
    try:
        import torch._dynamo
        cfg = torch._dynamo.config
        for name, want in (("recompile_limit", 64), ("cache_size_limit", 64),
                           ("accumulated_recompile_limit", 1024),
                           ("accumulated_cache_size_limit", 1024)):
            if hasattr(cfg, name):
                try:
                    setattr(cfg, name, max(int(getattr(cfg, name)), want))
                    done[name] = getattr(cfg, name)
                except Exception:
                    pass
    except Exception as e:
        done["error"] = err_text(e)
    return done


# ---------------------------------------------------------------- model

def make_config(B, shape):
    from transformers import LlamaConfig
    base = dict(COMMON)
    base.update(SHAPES[shape])
    new_style = accepts(LlamaConfig, "rope_parameters")
    tries = ["rope_parameters", "rope_scaling"] if new_style else ["rope_scaling", "rope_parameters"]
    first = None
    for style in tries:
        kw = dict(base)
        if style == "rope_parameters":
            kw["rope_parameters"] = dict(ROPE_LLAMA3, rope_theta=ROPE_THETA)
        else:
            kw["rope_theta"] = ROPE_THETA
            kw["rope_scaling"] = dict(ROPE_LLAMA3)
        try:
            cfg = LlamaConfig(**kw)
        except Exception as e:
            log(f"{shape}: LlamaConfig with {style} failed: {err_text(e, 300)}")
            continue
        theta, rtype = rope_info(cfg)
        ok = theta is not None and float(theta) == ROPE_THETA and rtype == "llama3"
        if first is None:
            first = (cfg, style, theta, rtype)
        if ok:
            return cfg, {"rope_style": style, "rope_theta": theta, "rope_type": rtype}
    if first is None:
        raise RuntimeError("could not build a LlamaConfig")
    cfg, style, theta, rtype = first
    log(f"{shape}: WARNING rope not as asked (theta={theta}, type={rtype}); speed is unaffected")
    return cfg, {"rope_style": style, "rope_theta": theta, "rope_type": rtype,
                 "rope_warning": "config does not hold llama3 rope with theta 500000"}


def no_init_context():
    for modname in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            mod = __import__(modname, fromlist=["no_init_weights"])
            fn = getattr(mod, "no_init_weights", None)
            if fn is not None:
                return fn, f"{modname}.no_init_weights"
        except Exception:
            continue
    return None, None


def build_model(B, shape):
    torch = B.torch
    from transformers import LlamaForCausalLM
    cfg, info = make_config(B, shape)
    no_init, no_init_name = no_init_context()
    attempts = [True, False] if no_init is not None else [False]
    last_err = None
    for use_no_init in attempts:
        model = None
        try:
            t = time.perf_counter()
            old = torch.get_default_dtype()
            dtype_set = False
            try:
                torch.set_default_dtype(torch.bfloat16)
                dtype_set = True
            except Exception:
                pass
            try:
                ctx = no_init() if use_no_init else contextlib.nullcontext()
                with torch.device(B.device), ctx:
                    model = LlamaForCausalLM(cfg)
            finally:
                torch.set_default_dtype(old)
            # every parameter in bf16 (buffers such as rope's inv_freq stay as built)
            for p in model.parameters():
                if p.dtype != torch.bfloat16:
                    p.data = p.data.to(torch.bfloat16)
            emb, head = model.get_input_embeddings(), model.get_output_embeddings()
            if cfg.tie_word_embeddings and head is not None and head.weight is not emb.weight:
                try:
                    model.tie_weights()
                except Exception:
                    pass
                if head.weight is not emb.weight:
                    head.weight = emb.weight
            gen = torch.Generator(device=B.device)
            gen.manual_seed(B.args.seed)
            with torch.no_grad():
                for _, p in model.named_parameters():  # shared (tied) ones come once
                    if p.dim() >= 2:
                        p.normal_(0.0, 0.02, generator=gen)
                    else:
                        p.fill_(1.0)  # RMSNorm weights, as a real checkpoint's scale
                for name, buf in model.named_buffers():
                    if buf.is_floating_point() and not bool(torch.isfinite(buf).all()):
                        raise RuntimeError(f"buffer {name} is not finite after build")
            model.eval()
            model.requires_grad_(False)
            B.sync()
            seen, n_params, n_bytes = set(), 0, 0
            for p in model.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                n_params += p.numel()
                n_bytes += p.numel() * p.element_size()
            head = model.get_output_embeddings()
            info.update(
                build_s=fnum(time.perf_counter() - t, 2),
                init=(no_init_name if use_no_init else "library init") + ", then normal(0, 0.02) "
                     "on matrices and 1.0 on RMSNorm weights",
                default_dtype_bf16=dtype_set,
                param_dtype=str(next(model.parameters()).dtype),
                params=n_params, weights_gib=fnum(n_bytes / 2**30, 3),
                tied_embeddings=bool(head is not None and head.weight is model.get_input_embeddings().weight),
            )
            return model, cfg, info
        except Exception as e:
            last_err = e
            log(f"{shape}: build {'with' if use_no_init else 'without'} no_init_weights failed: "
                f"{err_text(e, 500)}")
            del model
            B.cleanup()
            if B.is_oom(e):
                break
    raise last_err


def set_attn(model, impl):
    fn = getattr(model, "set_attn_implementation", None)
    if callable(fn):
        try:
            fn(impl)
        except Exception as e:
            log(f"set_attn_implementation({impl!r}) failed ({err_text(e, 200)}); setting the config")
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.config._attn_implementation = impl
    got = getattr(model.config, "_attn_implementation", None)
    if got != impl:
        raise RuntimeError(f"attention implementation is {got!r}, not {impl!r}")
    return got


# ---------------------------------------------------------------- one shape

class ShapeRun:
    def __init__(self, B, shape, model, cfg):
        self.B = B
        self.shape = shape
        self.model = model
        self.cfg = cfg
        self.mode_failed = {}
        self.orig_forward = None       # manual compile path: model.forward is replaced
        self.prefill_compiled = None
        self.manual_compiled = None
        self.compile_cfg = None
        self.compile_desc = None
        self.logits_kw = self._logits_kw()
        self._setup_compile()
        try:
            from transformers import GenerationConfig
            gc0 = GenerationConfig()
            self.has_disable_compile = hasattr(gc0, "disable_compile")
            self.has_max_cache_len = hasattr(gc0, "max_cache_len")
        except Exception:
            self.has_disable_compile = self.has_max_cache_len = False

    def _logits_kw(self):
        if self.B.args.full_logits:
            return {}
        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            return {}
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in params:
                return {name: 1}
        return {}

    def _setup_compile(self):
        a = self.B.args
        cc = None
        for modname in ("transformers", "transformers.generation",
                        "transformers.generation.configuration_utils"):
            try:
                cc = getattr(__import__(modname, fromlist=["CompileConfig"]), "CompileConfig", None)
            except Exception:
                cc = None
            if cc is not None:
                break
        can_generate_path = cc is not None and hasattr(self.model, "get_compiled_call")
        path = a.compile_path
        if path == "auto":
            path = "generate" if can_generate_path else "manual"
        if path == "generate" and not can_generate_path:
            log("compile path 'generate' is not available in this transformers; using 'manual'")
            path = "manual"
        self.compile_path = path
        kw = {"mode": "reduce-overhead"}
        if a.fullgraph:
            kw["fullgraph"] = True
        if a.static_shapes:
            kw["dynamic"] = False
        if path == "generate":
            # one object for the whole shape: generate recompiles when the config changes
            self.compile_cfg = cc(**kw)
            if not self.B.cuda and hasattr(self.compile_cfg, "_compile_all_devices"):
                self.compile_cfg._compile_all_devices = True  # smoke tests off the GPU only
            try:
                d = self.compile_cfg.to_dict()
            except Exception:
                d = {k: v for k, v in vars(self.compile_cfg).items() if not k.startswith("_")}
            self.compile_desc = {"path": "generate(cache_implementation='static', compile_config=...)",
                                 "compile_config": {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                                                    for k, v in d.items()}}
        else:
            self.compile_kw = dict(kw, fullgraph=bool(a.fullgraph))
            self.compile_desc = {"path": "model.forward = torch.compile(model.forward, ...), "
                                         "generate(cache_implementation='static')",
                                 "torch_compile": self.compile_kw}

    def enter_mode(self, mode):
        torch = self.B.torch
        set_attn(self.model, "eager" if mode == "eager" else "sdpa")
        if self.compile_path == "manual":
            if mode == COMPILED and self.orig_forward is None:
                self.orig_forward = self.model.forward
                if self.manual_compiled is None:  # one wrapper for the shape, reused
                    self.manual_compiled = torch.compile(self.orig_forward, **self.compile_kw)
                self.model.forward = self.manual_compiled
            elif mode != COMPILED and self.orig_forward is not None:
                try:
                    del self.model.forward  # back to the class's forward
                except AttributeError:
                    self.model.forward = self.orig_forward
                self.orig_forward = None

    def gen_kwargs(self, mode, new_tokens):
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if mode == COMPILED:
            kw["cache_implementation"] = "static"
            if self.has_max_cache_len:
                # one static cache size for the TTFT, warm-up and timed runs: no recompilation
                kw["max_cache_len"] = self.B.args.prompt + self.B.args.gen
            if self.compile_path == "generate":
                kw["compile_config"] = self.compile_cfg
            elif self.has_disable_compile:
                kw["disable_compile"] = True  # the forward is compiled already
        elif self.has_disable_compile:
            kw["disable_compile"] = True
        return kw

    def tokens(self, batch, length):
        torch = self.B.torch
        g = torch.Generator(device="cpu")
        g.manual_seed(self.B.args.seed * 1000003 + batch * 7919 + length)
        ids = torch.randint(0, self.cfg.vocab_size, (batch, length), generator=g, dtype=torch.long)
        return ids.to(self.B.device)

    def generate(self, ids, mask, kw):
        return self.model.generate(input_ids=ids, attention_mask=mask, **kw)

    # ---- decode
    def decode(self, mode, batch):
        B, a = self.B, self.B.args
        torch = B.torch
        row = {"mode": mode, "batch": batch, "prompt": a.prompt, "gen": a.gen}
        self.enter_mode(mode)
        B.reset_peak()
        ids = self.tokens(batch, a.prompt)
        mask = torch.ones_like(ids)
        kw1, kwn = self.gen_kwargs(mode, 1), self.gen_kwargs(mode, a.gen)
        warm_gen = a.gen if (mode == COMPILED or a.warmup_gen <= 0) else min(a.warmup_gen, a.gen)
        t_cfg = time.perf_counter()
        g0, s0 = compiled_graphs(torch), cudagraph_skips(torch)
        # TTFT: a generate with max_new_tokens=1, after its own warm-up
        self.generate(ids, mask, kw1)
        ttft, out1 = B.timed(lambda: self.generate(ids, mask, kw1))
        del out1
        # full generate: warm-up (compilation for the compiled mode), then the timed run
        tw, outw = B.timed(lambda: self.generate(ids, mask, self.gen_kwargs(mode, warm_gen)))
        del outw
        g1, s1 = compiled_graphs(torch), cudagraph_skips(torch)
        total, out = B.timed(lambda: self.generate(ids, mask, kwn))
        g2, s2 = compiled_graphs(torch), cudagraph_skips(torch)
        got = int(out.shape[1]) - a.prompt
        del out
        if got != a.gen:
            raise RuntimeError(f"generate returned {got} new tokens, not {a.gen}")
        dec = total - ttft
        row.update(
            status="ok",
            ttft_ms=fnum(ttft * 1e3),
            total_s=fnum(total, 4),
            decode_s=fnum(dec, 4),
            decode_tok_s=fnum(batch * a.gen / dec, 1) if (a.gen > 1 and dec > 0) else None,
            decode_step_ms=fnum(dec / (a.gen - 1) * 1e3) if a.gen > 1 else None,
            e2e_tok_s=fnum(batch * a.gen / total, 1),
            warmup_s=fnum(tw, 2),
            warmup_gen=warm_gen,
            config_s=fnum(time.perf_counter() - t_cfg, 1),
            peak_mem_gib=B.peak_gib(),
        )
        if dec <= 0:
            row["warning"] = "generate total time <= TTFT: no decode figure"
        if g0 is not None and g1 is not None:
            row["graphs_compiled_in_warmup"] = g1 - g0
            row["graphs_compiled_in_timed_run"] = g2 - g1
            if g2 != g1:
                row["warning"] = "torch.compile recompiled during the timed run"
        if s0 is not None and s2 is not None and s2 != s0:
            # inductor declined CUDA graphs for some graph (its log says why)
            row["cudagraph_skips"] = {"warmup": s1 - s0, "timed_run": s2 - s1}
        return row

    # ---- prefill
    def prefill(self, mode, length):
        B, a = self.B, self.B.args
        torch = B.torch
        row = {"mode": mode, "batch": 1, "prompt_len": length}
        self.enter_mode(mode)
        B.reset_peak()
        fwd = self.model.forward if self.orig_forward is None else self.orig_forward
        if mode == COMPILED and a.prefill_compile_mode.lower() != "none":
            if self.prefill_compiled is None:
                self.prefill_compiled = torch.compile(fwd, mode=a.prefill_compile_mode, dynamic=False)
            fwd = self.prefill_compiled
            row["compile"] = f"torch.compile(model.forward, mode={a.prefill_compile_mode!r}, dynamic=False)"
        ids = self.tokens(1, length)
        kw = dict(use_cache=True, **self.logits_kw)

        def once():
            with torch.no_grad():
                out = fwd(input_ids=ids, **kw)
            return out.logits.shape[1] if hasattr(out, "logits") else None

        t_cfg = time.perf_counter()
        tw, _ = B.timed(once)
        if mode == COMPILED:
            B.timed(once)  # a second warm-up: compilation may finish in two steps
        g1 = compiled_graphs(torch)
        times = []
        for _ in range(a.prefill_reps):
            dt, _ = B.timed(once)
            times.append(dt)
        g2 = compiled_graphs(torch)
        med = statistics.median(times)
        row.update(status="ok", median_ms=fnum(med * 1e3), min_ms=fnum(min(times) * 1e3),
                   times_ms=[fnum(t * 1e3) for t in times],
                   prefill_tok_s=fnum(length / med, 1) if med > 0 else None,
                   logits="all positions" if not self.logits_kw else "last position",
                   warmup_s=fnum(tw, 2), config_s=fnum(time.perf_counter() - t_cfg, 1),
                   peak_mem_gib=B.peak_gib())
        if g1 is not None and g2 is not None and g2 != g1:
            row["warning"] = "torch.compile recompiled during the timed runs"
        return row

    def restore(self):
        if self.orig_forward is not None:
            try:
                del self.model.forward
            except AttributeError:
                pass
            self.orig_forward = None


def task_list(args):
    modes = args.mode_list
    tasks = []
    if args.order == "mode":
        for m in modes:
            tasks += [("decode", m, b) for b in args.batches]
            tasks += [("prefill", m, n) for n in args.prefill]
        return tasks
    tasks += [("prefill", m, n) for m in modes if m != COMPILED for n in args.prefill]
    tasks += [("decode", m, b) for b in args.batches for m in modes]
    tasks += [("prefill", m, n) for m in modes if m == COMPILED for n in args.prefill]
    return tasks


def run_shape(B, shape, res, save):
    torch, a = B.torch, B.args
    t_shape = time.perf_counter()
    deadline = t_shape + a.budget_s
    entry = {"shape": shape, "status": "running", "budget_s": a.budget_s, "decode": [], "prefill": []}
    res["shapes"].append(entry)
    if B.cuda:
        try:
            free, total = torch.cuda.mem_get_info()
            entry["gpu_free_gib_before"] = fnum(free / 2**30, 2)
        except Exception:
            pass
    log(f"{shape}: building the model")
    model = None
    sr = None
    try:
        try:
            model, cfg, info = build_model(B, shape)
        except Exception as e:
            entry.update(status="error", error=err_text(e))
            log(f"{shape}: model build failed: {err_text(e, 500)}")
            traceback.print_exc(file=sys.stderr)
            return
        entry["model"] = info
        entry["config"] = {k: getattr(cfg, k, None) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings",
            "max_position_embeddings", "rms_norm_eps")}
        log(f"{shape}: built in {info.get('build_s')} s: {info.get('params', 0) / 1e9:.3f} B params, "
            f"{info.get('weights_gib')} GiB, tied={info.get('tied_embeddings')}, "
            f"rope {info.get('rope_type')} theta {info.get('rope_theta')}")
        sr = ShapeRun(B, shape, model, cfg)
        entry["compile"] = sr.compile_desc
        entry["prefill_logits_kw"] = sr.logits_kw
        save()
        tasks = task_list(a)
        for i, (kind, mode, n) in enumerate(tasks, 1):
            label = f"{shape} {kind} {mode} {'batch' if kind == 'decode' else 'len'} {n}"
            base = {"mode": mode, "batch": n, "prompt": a.prompt, "gen": a.gen} if kind == "decode" \
                else {"mode": mode, "batch": 1, "prompt_len": n}
            if time.perf_counter() > deadline:
                row = dict(base, status="skipped: budget")
            elif kind == "decode" and mode in sr.mode_failed:
                row = dict(base, status="skipped: mode failed earlier",
                           error=sr.mode_failed[mode])
            else:
                log(f"[{i}/{len(tasks)}] {label} ...")
                try:
                    row = sr.decode(mode, n) if kind == "decode" else sr.prefill(mode, n)
                except Exception as e:
                    oom = B.is_oom(e)
                    row = dict(base, status="oom" if oom else "error", error=err_text(e))
                    log(f"{label}: {'OUT OF MEMORY' if oom else 'FAILED'}: {err_text(e, 500)}")
                    if not oom:
                        traceback.print_exc(file=sys.stderr)
                        if kind == "decode" and mode == COMPILED:
                            sr.mode_failed[mode] = err_text(e, 500)
                B.cleanup()
                if row.get("status") == "ok":
                    if kind == "decode":
                        log(f"{label}: decode {row['decode_tok_s']} tok/s, TTFT {row['ttft_ms']} ms, "
                            f"total {row['total_s']} s, peak {row.get('peak_mem_gib')} GiB"
                            + (f" [{row['warning']}]" if row.get("warning") else ""))
                    else:
                        log(f"{label}: prefill {row['prefill_tok_s']} tok/s, median {row['median_ms']} ms"
                            + (f" [{row['warning']}]" if row.get("warning") else ""))
            (entry["decode"] if kind == "decode" else entry["prefill"]).append(row)
            entry["elapsed_s"] = fnum(time.perf_counter() - t_shape, 1)
            save()
        entry["status"] = "done"
    finally:
        if entry["status"] == "running":
            entry["status"] = "interrupted"
        entry["elapsed_s"] = fnum(time.perf_counter() - t_shape, 1)
        entry["peer"] = peer_summary(entry)
        if sr is not None:
            sr.restore()
            sr.model = None
            sr.prefill_compiled = sr.manual_compiled = None
        del sr, model
        try:
            import torch._dynamo
            torch._dynamo.reset()
        except Exception:
            pass
        B.cleanup()


def peer_summary(entry):
    """The best figure over modes: per decode batch and per prefill length."""
    dec, pre = {}, {}
    for r in entry.get("decode", []):
        if r.get("status") == "ok" and r.get("decode_tok_s"):
            k = str(r["batch"])
            if k not in dec or r["decode_tok_s"] > dec[k]["decode_tok_s"]:
                dec[k] = {"mode": r["mode"], "decode_tok_s": r["decode_tok_s"], "ttft_ms": r["ttft_ms"]}
    for r in entry.get("prefill", []):
        if r.get("status") == "ok" and r.get("prefill_tok_s"):
            k = str(r["prompt_len"])
            if k not in pre or r["prefill_tok_s"] > pre[k]["prefill_tok_s"]:
                pre[k] = {"mode": r["mode"], "prefill_tok_s": r["prefill_tok_s"], "median_ms": r["median_ms"]}
    return {"decode_tok_s_by_batch": dec, "prefill_tok_s_by_len": pre}


# ---------------------------------------------------------------- output

def table(res):
    lines = []
    w = "{:<14} {:<21} {:>6} {:>14} {:>10}  {}"
    lines.append(f"peer figure: {res.get('gpu', {}).get('name', '?')}, torch {res['versions'].get('torch')}, "
                 f"transformers {res['versions'].get('transformers')}")
    lines.append("")
    lines.append(w.format("shape", "mode", "batch", "decode tok/s", "TTFT ms", "status"))
    for e in res.get("shapes", []):
        if e.get("status") == "error":
            lines.append(w.format(e["shape"], "-", "-", "-", "-", "error: " + e.get("error", "")[:80]))
        for r in e.get("decode", []):
            st = r.get("status", "")
            if st != "ok":
                st = (st + ": " + r.get("error", "")).strip(": ")[:90]
            elif r.get("warning"):
                st = "ok (" + r["warning"] + ")"
            lines.append(w.format(e["shape"], r["mode"], r["batch"],
                                  "-" if r.get("decode_tok_s") is None else f"{r['decode_tok_s']:.1f}",
                                  "-" if r.get("ttft_ms") is None else f"{r['ttft_ms']:.1f}", st))
    lines.append("")
    w2 = "{:<14} {:<21} {:>6} {:>14} {:>10}  {}"
    lines.append(w2.format("shape", "mode", "prompt", "prefill tok/s", "median ms", "status"))
    for e in res.get("shapes", []):
        for r in e.get("prefill", []):
            st = r.get("status", "")
            if st != "ok":
                st = (st + ": " + r.get("error", "")).strip(": ")[:90]
            lines.append(w2.format(e["shape"], r["mode"], r["prompt_len"],
                                   "-" if r.get("prefill_tok_s") is None else f"{r['prefill_tok_s']:.1f}",
                                   "-" if r.get("median_ms") is None else f"{r['median_ms']:.2f}", st))
    lines.append("")
    lines.append("best over modes (the peer figure):")
    for e in res.get("shapes", []):
        p = e.get("peer") or {}
        d = ", ".join(f"b{k} {v['decode_tok_s']:.0f} ({v['mode']})"
                      for k, v in sorted(p.get("decode_tok_s_by_batch", {}).items(), key=lambda kv: int(kv[0])))
        f = ", ".join(f"{k} {v['prefill_tok_s']:.0f} ({v['mode']})"
                      for k, v in sorted(p.get("prefill_tok_s_by_len", {}).items(), key=lambda kv: int(kv[0])))
        lines.append(f"  {e['shape']}: decode tok/s: {d or '-'}")
        lines.append(f"  {e['shape']}: prefill tok/s: {f or '-'}")
    return "\n".join(lines)


def write_json(path, res):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):
        pass
    # never reach for a hub: everything is built from a config
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    res = {
        "tool": "bench/gpu/peer.py",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "args": {k: v for k, v in vars(args).items() if k not in ("shape", "modes")},
        "method": {
            "decode_tok_s": "batch*gen / (generate total s - TTFT s)",
            "ttft": "generate with max_new_tokens=1 at the same batch and prompt",
            "prefill_tok_s": "prompt_len / median forward s (batch 1, use_cache=True)",
            "weights": "random normal(0, 0.02), BF16; RMSNorm weights 1.0",
        },
        "versions": {"python": platform.python_version()},
        "shapes": [],
    }
    try:
        import torch
        import transformers
    except Exception as e:
        res.update(status="error", error=f"import failed: {err_text(e)}")
        log(res["error"])
        out = json.dumps(res, indent=2, default=str)
        if args.json:
            write_json(args.json, res)
        else:
            print(out, flush=True)
        return 2
    if not args.hf_verbose:
        try:
            transformers.logging.set_verbosity_error()
        except Exception:
            pass
    res["versions"].update(torch=torch.__version__, transformers=transformers.__version__,
                           cuda=getattr(torch.version, "cuda", None))
    try:
        res["versions"]["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        res.update(status="error", error="CUDA is not available to torch")
        log(res["error"])
        if args.json:
            write_json(args.json, res)
        else:
            print(json.dumps(res, indent=2, default=str), flush=True)
        return 2
    res["gpu"] = gpu_info(torch, args.device)
    res["dynamo_limits"] = raise_recompile_limits(torch)
    log(f"{res['gpu'].get('name')}: torch {torch.__version__}, transformers {transformers.__version__}; "
        f"shapes {','.join(args.shapes)}; modes {','.join(args.mode_list)}; batches "
        f"{','.join(map(str, args.batches))}; prompt {args.prompt} gen {args.gen}; budget {args.budget_s} s/shape")
    B = Bench(torch, transformers, args)

    def save():
        if args.json:
            try:
                write_json(args.json, res)
            except Exception as e:
                log(f"could not write {args.json}: {err_text(e, 200)}")

    rc = 0
    try:
        for shape in args.shapes:
            run_shape(B, shape, res, save)
        res["status"] = "done"
    except (KeyboardInterrupt, SystemExit) as e:
        res["status"] = f"interrupted ({type(e).__name__} {getattr(e, 'code', '')})".strip()
        log("interrupted: writing what was measured")
        rc = 130
    except Exception as e:  # a bug here: still write what was measured
        res.update(status="error", error=err_text(e))
        traceback.print_exc(file=sys.stderr)
        rc = 1
    finally:
        res["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        res["elapsed_s"] = fnum(time.perf_counter() - T0, 1)
        text = table(res)
        if args.json:
            save()
            print(text, flush=True)
            log(f"wrote {args.json}")
        else:
            print(text, file=sys.stderr, flush=True)
            print(json.dumps(res, indent=2, default=str), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
