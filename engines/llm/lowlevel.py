"""Thin, owned wrappers around llama.cpp's C API (via llama-cpp-python's ctypes bindings).

Each class owns one C object and frees it in ``close``. Nothing here is thread-safe on its
own: a ``Context`` and its ``Batch`` belong to one thread (the scheduler's), the ``Model``
and its vocabulary are read-only after loading and may be shared.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from engines.errors import (
    ContextLengthError,
    EngineError,
    InputTooLongError,
    InvalidRequestError,
    ModelLoadError,
)
from engines.llm.grammar import check_grammar

log = logging.getLogger(__name__)
PENALTY_WINDOW = 4096  # generated tokens the presence/frequency penalties look back over
NATIVE_LOG_MAX = 500  # characters of one native log line (never a whole grammar or prompt)

_backend_lock = threading.Lock()
_backend_ready = False


_native_log = logging.getLogger("llama_cpp.native")
_NATIVE_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml: 1 debug, 2 info, 5 continued


@llama_cpp.llama_log_callback
def _route_native_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    lvl = _NATIVE_LEVELS.get(level, logging.DEBUG)
    if _native_log.isEnabledFor(lvl):
        line = text[: NATIVE_LOG_MAX * 4].decode("utf-8", errors="replace").rstrip("\n")
        if len(line) > NATIVE_LOG_MAX:
            line = line[:NATIVE_LOG_MAX] + f"... [{len(text)} bytes]"
        _native_log.log(lvl, "%s", line)


def _init_backend() -> None:
    """Initialise llama.cpp once per process; its log lines go to Python logging."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_route_native_log, ctypes.c_void_p(0))
        _backend_ready = True


def route_native_log(*setters: Any) -> None:
    """Send another native library's log (libmtmd's ``mtmd_log_set``, which take ggml's
    log callback) to the same Python logger as llama.cpp's."""
    for set_log in setters:
        set_log(_route_native_log, ctypes.c_void_p(0))


def gpu_offload_supported() -> bool:
    """True when this llama.cpp build can offload layers to a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload())


class Model:
    """A GGUF model loaded into memory; its vocabulary and metadata."""

    def __init__(self, path: Path, *, n_gpu_layers: int, use_extra_bufts: bool = True,
                 vocab_only: bool = False) -> None:
        """``use_extra_bufts=False`` keeps weights out of llama.cpp's extra buffer types
        (repacked CPU layouts, AMX): slower on some CPUs, but none of those kernels run.
        ``vocab_only``: the vocabulary and metadata without the weights (tokenising only)."""
        _init_backend()
        if not Path(path).is_file():
            raise ModelLoadError(f"model file not found: {path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = use_extra_bufts
        params.vocab_only = vocab_only
        ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self.ptr = ptr
        self.path = Path(path)
        self.vocab = llama_cpp.llama_model_get_vocab(ptr)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(llama_cpp.llama_model_n_embd(ptr))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(ptr))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self._piece_cache: dict[int, bytes] = {}

    def meta(self, key: str) -> str | None:
        """A metadata string from the GGUF header, or None when absent."""
        size = 1024
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Token ids of ``text``."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            out = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), out, cap, add_special, parse_special
            )
            if n >= 0:
                return list(out[:n])
            cap = -n

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens rendered as text); cached."""
        cached = self._piece_cache.get(token)
        if cached is not None:
            return cached
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, True)
            if n >= 0:
                piece = buf.raw[:n]
                self._piece_cache[token] = piece
                return piece
            size = -n

    def token_text(self, token: int) -> str:
        """The vocabulary text of a token id ("" when out of range)."""
        if not 0 <= token < self.n_vocab:
            return ""
        return self.piece(token).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        """End-of-generation token (EOS, EOT, ...)."""
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def bos_text(self) -> str:
        return self.token_text(int(llama_cpp.llama_vocab_bos(self.vocab)))

    def eos_text(self) -> str:
        return self.token_text(int(llama_cpp.llama_vocab_eos(self.vocab)))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True)
class ContextConfig:
    """Settings for one llama.cpp context."""

    n_ctx: int
    n_batch: int
    n_seq_max: int
    n_threads: int
    embeddings: bool = False
    # One KV stream per sequence: a sequence's cells never mix with another's, which keeps
    # greedy output identical whatever else shares the batch (see batched.py).
    kv_unified: bool = False
    # None: llama.cpp decides (on for CPU). Its CPU flash attention gives results that
    # depend slightly on how many tokens a micro-batch holds; off, they do not.
    flash_attn: bool | None = None
    pooling: str = "mean"  # with embeddings: how token vectors become one (POOLING)


#: Pooling an embeddings context may use (llama.cpp's enum llama_pooling_type).
POOLING = {"mean": 1, "cls": 2}


class Context:
    """A llama.cpp context (KV cache + compute buffers) on a loaded model."""

    def __init__(self, model: Model, config: ContextConfig) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_batch
        params.n_seq_max = config.n_seq_max
        params.n_threads = config.n_threads
        params.n_threads_batch = config.n_threads
        params.kv_unified = config.kv_unified
        if config.flash_attn is not None:
            params.flash_attn_type = int(config.flash_attn)  # 0 disabled, 1 enabled
        params.no_perf = True
        if config.embeddings:
            params.embeddings = True
            params.pooling_type = POOLING[config.pooling]
        ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not create a context for {model.path}")
        self.ptr = ptr
        self.model = model
        self.memory = llama_cpp.llama_get_memory(ptr)
        self.n_ctx = int(llama_cpp.llama_n_ctx(ptr))
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(ptr))
        self.n_batch = config.n_batch

    def decode(self, batch: Batch) -> None:
        """Run the model over ``batch``; EngineError when llama.cpp refuses it."""
        rc = llama_cpp.llama_decode(self.ptr, batch.raw)
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc}")

    def logits(self, index: int) -> np.ndarray:
        """Raw logits of batch entry ``index`` after ``decode`` (a view into llama.cpp's
        buffer, valid until the next decode: copy what must outlive it)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ptr, index)
        if not ptr:
            raise EngineError(f"llama.cpp has no logits for batch entry {index}")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def forget(self, seq_id: int) -> None:
        """Drop every KV cell of ``seq_id`` (-1: all sequences)."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def move(self, src: int, dst: int) -> None:
        """Move sequence ``src`` to the free id ``dst`` (its cells are copied)."""
        self._copy_cells(src, dst)
        llama_cpp.llama_memory_seq_rm(self.memory, src, -1, -1)

    def trim(self, seq_id: int, keep: int) -> None:
        """Keep only positions ``0..keep-1`` of ``seq_id`` (a reused prefix)."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, keep, -1)

    def copy_prefix(self, src: int, dst: int, keep: int) -> None:
        """Make ``dst`` hold the first ``keep`` positions of ``src`` (``src`` unchanged)."""
        self._copy_cells(src, dst)
        self.trim(dst, keep)

    def _copy_cells(self, src: int, dst: int) -> None:
        """Replace ``dst``'s cells with a copy of ``src``'s, through a state buffer.

        Across KV streams ``llama_memory_seq_cp`` copies the whole stream (every one of its
        ``n_ctx_seq`` cells, about 25 ms for a 4,096-cell SmolLM2 stream on this CPU, paid
        by the next decode); the state copies only the cells in use (about 1 ms for 40),
        and the same bytes, so results do not change."""
        state = self.save(src)
        if not state:
            self.forget(dst)
        elif not self.restore(dst, state):
            raise EngineError(f"llama.cpp refused to copy sequence {src} to {dst}")

    def save(self, seq_id: int) -> bytearray:
        """The KV state of ``seq_id`` (for the host-RAM prefix cache), written by llama.cpp
        straight into the buffer that is kept: one copy of the cells, not two (a 2,244-token
        SmolLM2 state, 52 MB: 55 -> 27 ms here; a restore 37 -> 8 ms)."""
        size = int(llama_cpp.llama_state_seq_get_size(self.ptr, seq_id))
        out = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(out)
        n = int(llama_cpp.llama_state_seq_get_data(self.ptr, view, size, seq_id))
        del view  # releases the buffer, so ``out`` may shrink to what was written
        del out[n:]
        return out

    def restore(self, seq_id: int, data: bytes | bytearray) -> bool:
        """Load a state from ``save`` into ``seq_id`` (emptied first); False if refused.
        A ``bytearray`` is read in place (``save``'s own), ``bytes`` through a copy."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        arr = ctypes.c_uint8 * len(data)
        buf = arr.from_buffer(data) if isinstance(data, bytearray) else arr.from_buffer_copy(data)
        return int(llama_cpp.llama_state_seq_set_data(self.ptr, buf, len(data), seq_id)) > 0

    def embedding(self, seq_id: int, n_embd: int) -> list[float]:
        """Pooled embedding of ``seq_id`` after a decode."""
        ptr = llama_cpp.llama_get_embeddings_seq(self.ptr, seq_id)
        if not ptr:
            raise EngineError("llama.cpp returned no pooled embedding")
        return list(ptr[:n_embd])

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable llama_batch of up to ``capacity`` tokens, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.capacity = capacity
        self.raw.n_tokens = 0

    def clear(self) -> None:
        self.raw.n_tokens = 0

    def __len__(self) -> int:
        return int(self.raw.n_tokens)

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append one token; return its index in the batch (for reading its logits)."""
        i = int(self.raw.n_tokens)
        if i >= self.capacity:
            raise EngineError("batch is full")
        b = self.raw
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def close(self) -> None:
        if self.capacity:
            llama_cpp.llama_batch_free(self.raw)
            self.capacity = 0


_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


class Sampler:
    """A sampler chain: [grammar, lazy when it has triggers] [logit bias]
    [repetition/presence/frequency penalties] then greedy, or top-p -> temperature ->
    seeded draw."""

    def __init__(
        self,
        model: Model,
        *,
        temperature: float,
        top_p: float,
        seed: int | None,
        grammar: str | None,
        grammar_triggers: Sequence[str] = (),
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Sequence[tuple[int, float]] = (),
        repetition_penalty: float = 1.0,
    ) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self.ptr = llama_cpp.llama_sampler_chain_init(params)
        try:
            if grammar:
                check_grammar(grammar)  # llama.cpp's parser recurses per nested group
                if grammar_triggers:
                    patterns = (ctypes.c_char_p * len(grammar_triggers))(
                        *[p.encode("utf-8") for p in grammar_triggers])
                    g = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                        model.vocab, grammar.encode("utf-8"), b"root", patterns,
                        len(grammar_triggers), None, 0)
                else:
                    g = llama_cpp.llama_sampler_init_grammar(
                        model.vocab, grammar.encode("utf-8"), b"root"
                    )
                if not g:
                    raise InvalidRequestError("grammar could not be parsed (see GBNF rules)")
                llama_cpp.llama_sampler_chain_add(self.ptr, g)
            if logit_bias:
                if any(not 0 <= t < model.n_vocab for t, _ in logit_bias):
                    raise InvalidRequestError(
                        f"logit_bias names a token id outside 0..{model.n_vocab - 1}")
                arr = (llama_cpp.llama_logit_bias * len(logit_bias))(
                    *[llama_cpp.llama_logit_bias(t, b) for t, b in logit_bias])
                llama_cpp.llama_sampler_chain_add(self.ptr, llama_cpp.llama_sampler_init_logit_bias(
                    model.n_vocab, len(logit_bias), arr))
            if presence_penalty or frequency_penalty or repetition_penalty != 1.0:
                if repetition_penalty <= 0:
                    raise InvalidRequestError("repetition_penalty must be above 0")
                # over the whole completion so far (the prompt is not counted)
                llama_cpp.llama_sampler_chain_add(self.ptr, llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab, PENALTY_WINDOW, repetition_penalty, frequency_penalty,
                    presence_penalty))
            if temperature <= 0:
                llama_cpp.llama_sampler_chain_add(self.ptr, llama_cpp.llama_sampler_init_greedy())
            else:
                if top_p < 1.0:
                    llama_cpp.llama_sampler_chain_add(
                        self.ptr, llama_cpp.llama_sampler_init_top_p(top_p, 1)
                    )
                llama_cpp.llama_sampler_chain_add(
                    self.ptr, llama_cpp.llama_sampler_init_temp(temperature)
                )
                draw_seed = llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed & 0xFFFFFFFF
                llama_cpp.llama_sampler_chain_add(
                    self.ptr, llama_cpp.llama_sampler_init_dist(draw_seed)
                )
        except BaseException:
            self.close()
            raise

    def sample(self, ctx: Context, index: int) -> int:
        """Pick (and accept) the next token from the logits of batch entry ``index``."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, index))

    def sample_logits(self, logits: np.ndarray) -> int:
        """Pick (and accept) the next token from saved raw logits, as ``sample`` does from
        a batch entry's (llama_sampler_sample: every token's candidate, in id order, run
        through the chain, then the selected one accepted)."""
        n = int(logits.shape[0])
        cand = np.empty(n, dtype=_TOKEN_DATA)
        cand["id"] = np.arange(n, dtype=np.int32)
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = llama_cpp.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=n, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise EngineError("the sampler selected no token")
        token = int(arr.data[arr.selected].id)
        llama_cpp.llama_sampler_accept(self.ptr, token)
        return token

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None


class Embedder:
    """An embeddings context on a loaded model: pooled (mean or CLS), L2-normalised vectors.

    One decode reads up to ``n_seq`` inputs packed into ``n_ctx`` tokens (each input alone
    must fit ``max_tokens``, the model's training context at most), so the memory a request
    takes is bounded by ``n_ctx`` however many inputs it holds. Attention never crosses
    inputs (each is its own sequence)."""

    def __init__(self, model: Model, *, n_ctx: int, n_threads: int, n_seq: int = 1,
                 pooling: str = "mean") -> None:
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {', '.join(POOLING)}")
        self.max_tokens = min(n_ctx, model.n_ctx_train)
        n = max(n_ctx, self.max_tokens)
        self.model = model
        self.n_seq = n_seq
        self.ctx = Context(model, ContextConfig(
            n_ctx=n, n_batch=n, n_seq_max=n_seq, n_threads=n_threads, embeddings=True,
            kv_unified=True, pooling=pooling))
        self.batch = Batch(n)

    def embed(self, text: str) -> list[float]:
        """The embedding of ``text`` (tokenised with the model's special tokens)."""
        ids = self.model.tokenize(text, add_special=True, parse_special=False)
        if not ids:
            raise InvalidRequestError("cannot embed an empty input")
        return self.embed_ids([ids])[0]

    def input_ids(self, model: Model, texts: Sequence[str], max_chars_per_token: int
                  ) -> list[list[int]]:
        """Token ids of each input; 400 naming an empty or over-long input by its index
        (a text too long to be worth tokenising is refused by its length first)."""
        limit, ids = self.max_tokens, []
        for i, text in enumerate(texts):
            if not text:
                raise InvalidRequestError(f"input[{i}] is empty")
            if len(text) > limit * max_chars_per_token:
                raise InputTooLongError(i, len(text), limit, "characters")
            tokens = model.tokenize(text, add_special=True, parse_special=False)
            if len(tokens) > limit:
                raise InputTooLongError(i, len(tokens), limit)
            ids.append(tokens)
        return ids

    def embed_ids(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One vector per token list (ids already checked; each within ``max_tokens``)."""
        out: list[list[float]] = []
        i = 0
        while i < len(inputs):
            self.ctx.forget(-1)
            self.batch.clear()
            seqs = 0
            while (i + seqs < len(inputs) and seqs < self.n_seq
                   and len(self.batch) + len(inputs[i + seqs]) <= self.batch.capacity):
                ids = inputs[i + seqs]
                if not ids or len(ids) > self.max_tokens:
                    raise ContextLengthError(len(ids), self.max_tokens)
                for pos, tok in enumerate(ids):
                    self.batch.add(int(tok), pos, seqs, True)
                seqs += 1
            if seqs == 0:  # longer than the whole batch: cannot happen (max_tokens <= n_ctx)
                raise ContextLengthError(len(inputs[i]), self.max_tokens)
            self.ctx.decode(self.batch)
            for s in range(seqs):
                vec = self.ctx.embedding(s, self.model.n_embd)
                norm = math.sqrt(sum(v * v for v in vec)) or 1.0
                out.append([v / norm for v in vec])
            i += seqs
        self.ctx.forget(-1)
        return out

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()


def prompt_ids(model: Model, tokens: Sequence[int]) -> list[int]:
    """Validate token ids against the vocabulary; InvalidRequestError on a bad id."""
    ids = [int(t) for t in tokens]
    bad = next((t for t in ids if not 0 <= t < model.n_vocab), None)
    if bad is not None:
        raise InvalidRequestError(f"prompt token id {bad} is outside the vocabulary "
                                  f"(0..{model.n_vocab - 1})")
    return ids
