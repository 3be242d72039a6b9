"""ByteNet through the one runner: byte language modelling and character-level translation.

The model, losses and decoders are in deepgen/bytenet (Kalchbrenner et al., "Neural Machine
Translation in Linear Time", arXiv:1610.10099 v2); the data in deepgen/data/enwik8.py and
deepgen/data/parallel_text.py.

data.name="enwik8" (language modelling, Sec. 6). Training: windows of data.seq_len bytes drawn
as epochs over the train split cut every seq_len - context bytes, each shifted by a random offset;
the loss is the mean NLL of the bytes after the first data.context (paper: 500 and 100). Eval: the
same windows tiling eval.split so that every byte after the first `context` is scored exactly
once with at least `context` bytes before it (`bits_per_byte`, the paper's unit), beside the
order-0 entropy of the same bytes and the train split's unigram model on them. Samples: text
generated with the caches after a prompt of held-out text.

data.name="parallel" (translation, Sec. 5). Training: pairs of the train split of at most
data.max_bytes bytes each, every batch padded to the next multiple of data.pad_multiple target
positions P and its sources to a|P| + b positions (the paper's bucketing, recalled); the loss is
the NLL of each target byte and its EOS. Eval: `bits_per_char` of the eval.split targets (Table 4's
unit) and `bleu` (sacrebleu, corpus level) of beam-search translations (eval.beam_size, total
log-likelihood, EOS-terminated only), beside `copy_source_bleu`, the BLEU of copying the source,
and `bits_per_char_mismatched_source`, the same targets scored given another pair's source (the
gap to `bits_per_char` is what the model takes from the source).
Samples: sources, references and greedy and beam translations of held-out pairs, as text.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from ml_collections import ConfigDict

from deepgen.bytenet import decoding, losses
from deepgen.bytenet import model as bytenet
from deepgen.core import distributed
from deepgen.core.errors import DataError
from deepgen.core.optim import make_optimizer
from deepgen.core.train_loop import Unit
from deepgen.core.validate import Checker
from deepgen.data import enwik8, parallel_text
from deepgen.data.pipeline import EpochIterator
from experiments.contract import Method

log = logging.getLogger(__name__)

TASKS = ("enwik8", "parallel")
SPLITS = ("train", "validation", "test")
QUICK_WINDOWS = 16
QUICK_PAIRS = 8


class ByteNetState(struct.PyTreeNode):
    """Step, parameters and optimiser state."""

    step: jax.Array
    params: Any
    opt_state: Any


def _bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, 4-grams, exponential smoothing off)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


class ByteNetMethod(Method):
    """ByteNet: the byte language model (data.name="enwik8") or the translator ("parallel")."""

    name = "bytenet"

    @classmethod
    def validate(cls, config: ConfigDict) -> None:
        """One ConfigError naming the first field whose value is not allowed."""
        check = Checker(config)
        check.common()
        check.optimiser()
        check.one_of("data.name", TASKS)
        lm = config.data.name == "enwik8"
        check.one_of("data.source", enwik8.SOURCES if lm else parallel_text.SOURCES)
        check.one_of("model.unit", bytenet.UNITS)
        check.positive(
            "model.hidden",
            "model.decoder_blocks",
            "model.kernel_size",
            "model.encoder_kernel_size",
            "model.unfold_a",
            "eval.batch_size",
            "eval.beam_size",
            "eval.max_length_factor",
            "sample.num_bytes",
            "sample.temperature",
            "sample.num_pairs",
            "data.pad_multiple",
        )
        check.non_negative(
            "model.encoder_blocks",
            "model.unfold_b",
            "data.max_bytes",
            "eval.max_windows",
            "eval.num_pairs",
            "sample.prompt_bytes",
        )
        check.in_unit_interval("model.dropout")
        check.one_of("eval.split", SPLITS)
        rates = tuple(config.model.rates)
        check(len(rates) > 0 and all(int(r) >= 1 for r in rates), "model.rates", "dilations >= 1")
        if lm:
            check(config.model.encoder_blocks == 0, "model.encoder_blocks", "0 for enwik8 (LM)")
            check.positive("data.seq_len")
            check.non_negative("data.context")
            seq_len = config.data.seq_len
            check(
                config.data.context < seq_len - 1,
                "data.context",
                f"< data.seq_len - 1 = {seq_len - 1}",
            )
        else:
            check(config.model.encoder_blocks > 0, "model.encoder_blocks", "> 0 for translation")
            check.positive("data.heldout")
        check.divisible_by_devices()

    def __init__(self, config: ConfigDict, *, mode: str = "train"):
        super().__init__(config, mode=mode)
        self.lm = config.data.name == "enwik8"
        m = config.model
        self.model = bytenet.ByteNet(
            vocab_size=enwik8.VOCAB_SIZE if self.lm else parallel_text.VOCAB_SIZE,
            hidden=int(m.hidden),
            decoder_blocks=int(m.decoder_blocks),
            encoder_blocks=int(m.encoder_blocks),
            kernel_size=int(m.kernel_size),
            encoder_kernel_size=int(m.encoder_kernel_size),
            unit=str(m.unit),
            rates=tuple(int(r) for r in m.rates),
            dropout=float(m.dropout),
        )
        self.optimizer = make_optimizer(config.opt, int(config.train.num_steps))
        self._splits: dict[str, Any] = {}
        if mode == "train":
            self.train_data = self._split("train")
            self._check_train_data()

    # ---- data --------------------------------------------------------------------------------

    def _split(self, split: str) -> Any:
        """The split's bytes (LM) or its pairs of at most data.max_bytes bytes (translation)."""
        if split in self._splits:
            return self._splits[split]
        data = self.config.data
        if self.lm:
            loaded = enwik8.load_enwik8(split, data_dir=data.dir or None, source=data.source)
        else:
            loaded = parallel_text.load_parallel(
                split,
                data_dir=data.dir or None,
                source=data.source,
                source_lang=str(data.source_lang),
                target_lang=str(data.target_lang),
                heldout=int(data.heldout),
                seed=0,
                tfds_name=str(data.tfds_name),
            )
            if data.max_bytes:
                loaded = parallel_text.filter_by_length(loaded, int(data.max_bytes))
        self._splits[split] = loaded
        return loaded

    def _check_train_data(self) -> None:
        batch = int(self.config.train.batch_size)
        if self.lm:
            have, need = self.train_data.num_tokens, int(self.config.data.seq_len)
            if have < need:
                raise DataError(
                    f"{self.train_data.source} has {have:,} train bytes, fewer than one window of "
                    f"data.seq_len={need}; use a shorter data.seq_len or more text"
                )
            if self._num_train_windows() < batch:
                raise DataError(
                    f"{self.train_data.source} gives {self._num_train_windows()} training "
                    f"windows, fewer than train.batch_size={batch}"
                )
        elif self.train_data.num_pairs < batch:
            raise DataError(
                f"{self.train_data.source} has {self.train_data.num_pairs} training pairs of at "
                f"most data.max_bytes={self.config.data.max_bytes} bytes, fewer than "
                f"train.batch_size={batch}; raise data.max_bytes or use more data"
            )

    @property
    def _stride(self) -> int:
        return int(self.config.data.seq_len) - int(self.config.data.context)

    def _num_train_windows(self) -> int:
        return (self.train_data.num_tokens - int(self.config.data.seq_len)) // self._stride + 1

    def _pair_batch(self, sources: list[bytes], targets: list[bytes]) -> dict[str, np.ndarray]:
        """Sources, decoder inputs and targets padded as the paper's buckets (module docstring)."""
        multiple = int(self.config.data.pad_multiple)
        longest = max(max(len(s), len(t)) for s, t in zip(sources, targets, strict=True)) + 1
        length = parallel_text.padded_length(longest, multiple)
        source_len = max(length, self._unfolded(length))
        targets_BxT = parallel_text.pad_batch(targets, length=length, add_eos=True)
        inputs_BxT = np.full_like(targets_BxT, parallel_text.PAD)
        inputs_BxT[:, 0] = parallel_text.BOS
        inputs_BxT[:, 1:] = targets_BxT[:, :-1]
        inputs_BxT[inputs_BxT == parallel_text.EOS] = parallel_text.PAD
        return {
            "source": parallel_text.pad_batch(sources, length=source_len, add_eos=True),
            "source_length": np.array([len(s) + 1 for s in sources], np.int32),
            "inputs": inputs_BxT,
            "targets": targets_BxT,
        }

    def _unfolded(self, source_length: int) -> int:
        m = self.config.model
        return bytenet.unfolded_length(source_length, a=float(m.unfold_a), b=int(m.unfold_b))

    def batches(self) -> EpochIterator:
        """Shuffled epochs of LM windows (random offsets) or of translation pairs."""
        config = self.config
        batch = int(config.train.batch_size)
        rows = distributed.process_slice(batch)
        if self.lm:
            bytes_N = self.train_data.bytes_N
            seq_len, stride = int(config.data.seq_len), self._stride
            last_start = len(bytes_N) - seq_len
            context = int(config.data.context)

            def make_lm_batch(indices, process_rows, rng):
                shift = rng.integers(0, stride, size=len(indices))
                starts = np.minimum(indices * stride + shift, last_start)[process_rows]
                windows = bytes_N[starts[:, None] + np.arange(seq_len)]
                scored = np.broadcast_to(np.arange(seq_len) >= context, windows.shape)
                return {"window": windows.astype(np.int32), "scored": scored.astype(np.float32)}

            return EpochIterator(
                num_examples=self._num_train_windows(),
                global_batch_size=batch,
                make_batch=make_lm_batch,
                seed=int(config.seed),
                process_rows=rows,
            )
        data = self.train_data

        def make_pair_batch(indices, process_rows, rng):
            del rng
            chosen = indices[process_rows]
            return self._pair_batch(
                [data.source_lines[i] for i in chosen], [data.target_lines[i] for i in chosen]
            )

        return EpochIterator(
            num_examples=data.num_pairs,
            global_batch_size=batch,
            make_batch=make_pair_batch,
            seed=int(config.seed),
            process_rows=rows,
        )

    # ---- training ----------------------------------------------------------------------------

    def unit(self) -> Unit:
        """One optimiser step on train.batch_size windows or pairs."""
        return Unit("steps", 1, int(self.config.train.batch_size))

    def _init_params(self, rng: jax.Array) -> Any:
        if self.lm:
            return self.model.init(rng, jnp.zeros((1, 8), jnp.int32))

        def forward(module: bytenet.ByteNet) -> jax.Array:
            encoded = module.encode(jnp.zeros((1, 8), jnp.int32), jnp.full((1,), 8))
            return module(jnp.zeros((1, 8), jnp.int32), encoded)

        return self.model.init(rng, method=forward)

    def init_state(self, rng: jax.Array) -> ByteNetState:
        """Fresh parameters and optimiser state."""
        params = self._init_params(rng)
        return ByteNetState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params)
        )

    def _loss_sums(
        self, params: Any, batch: Mapping[str, jax.Array], dropout_rng: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """(summed nats, scored bytes) of a batch."""
        if self.lm:
            return losses.lm_loss(
                params,
                model=self.model,
                window_BxL=batch["window"],
                scored_BxL=batch["scored"],
                dropout_rng=dropout_rng,
            )
        m = self.config.model
        return losses.translation_loss(
            params,
            model=self.model,
            source_BxS=batch["source"],
            source_length_B=batch["source_length"],
            inputs_BxT=batch["inputs"],
            targets_BxT=batch["targets"],
            unfold_a=float(m.unfold_a),
            unfold_b=int(m.unfold_b),
            pad=parallel_text.PAD,
            dropout_rng=dropout_rng,
        )

    def train_step(
        self, state: ByteNetState, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[ByteNetState, dict]:
        """One Adam step on the mean NLL per scored byte (nats)."""
        rng = jax.random.fold_in(rng, state.step)  # the loop passes one key; each step draws anew
        dropout_rng = rng if self.config.model.dropout > 0 else None

        def loss_fn(params):
            total, count = self._loss_sums(params, batch, dropout_rng)
            return total / jnp.maximum(count, 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "bits_per_byte": loss / math.log(2.0),
            "grad_norm": optax.tree_utils.tree_norm(grads),
        }
        return new_state, metrics

    def describe(self) -> list[str]:
        """The data and the model."""
        abstract = jax.eval_shape(self.init_state, jax.random.key(0))
        m = self.model
        what = (
            f"ByteNet language model: {m.decoder_blocks} {m.unit} blocks"
            if self.lm
            else f"ByteNet translator: {m.encoder_blocks} encoder + {m.decoder_blocks} decoder "
            f"{m.unit} blocks"
        )
        data = self.train_data
        size = f"{data.num_tokens:,} bytes" if self.lm else f"{data.num_pairs:,} pairs"
        return [
            f"training data: {data.source} ({size})",
            f"model: {what}, d = {m.hidden}, receptive field {m.receptive_field} bytes, "
            f"{bytenet.count_params(abstract.params):,} parameters on {jax.device_count()} devices",
        ]

    # ---- evaluation --------------------------------------------------------------------------

    def eval_tag(self) -> str:
        """The split; the runner adds the data source."""
        return str(self.config.eval.split)

    def _summed_nats(self, params: Any, batch: Mapping[str, np.ndarray]) -> tuple[float, float]:
        fn = self.jitted("loss_sums", lambda p, b: self._loss_sums(p, b, None))
        total, count = fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
        return float(total), float(count)

    def evaluate(self, state: ByteNetState, *, step: int, quick: bool, progress: Any) -> dict:
        """bits_per_byte (LM) or bits_per_char and BLEU (translation); see the module docstring."""
        del step
        if self.lm:
            return self._evaluate_lm(state.params, quick, progress)
        return self._evaluate_translation(state.params, quick, progress)

    def _evaluate_lm(self, params: Any, quick: bool, progress: Any) -> dict:
        config = self.config
        split = str(config.eval.split)
        data = self._split(split)
        seq_len, context = int(config.data.seq_len), int(config.data.context)
        if data.num_tokens < seq_len:
            raise DataError(
                f"{data.source} has {data.num_tokens:,} {split} bytes, fewer than one window of "
                f"data.seq_len={seq_len}"
            )
        windows_WxL, scored_WxL = enwik8.lm_windows(data.bytes_N, seq_len=seq_len, context=context)
        limit = QUICK_WINDOWS if quick else int(config.eval.max_windows)
        if limit:
            windows_WxL, scored_WxL = windows_WxL[:limit], scored_WxL[:limit]
        batch = int(config.eval.batch_size)
        num_batches = -(-len(windows_WxL) // batch)
        tracker = progress("eval", num_batches, unit="batches")
        total = count = 0.0
        for i in range(num_batches):
            window = windows_WxL[i * batch : (i + 1) * batch]
            scored = scored_WxL[i * batch : (i + 1) * batch]
            pad = batch - len(window)  # a full last batch: one compiled shape
            window = np.pad(window, ((0, pad), (0, 0)))
            scored = np.pad(scored, ((0, pad), (0, 0)))
            nats, n = self._summed_nats(
                params, {"window": window.astype(np.int32), "scored": scored.astype(np.float32)}
            )
            total, count = total + nats, count + n
            tracker.advance()
        scored_bytes = windows_WxL[scored_WxL.astype(bool)]
        train = self._split("train")
        return {
            "bits_per_byte": total / count / math.log(2.0),
            "nats_per_byte": total / count,
            "scored_bytes": int(count),
            "num_windows": len(windows_WxL),
            "protocol": (
                f"windows of {seq_len} bytes every {seq_len - context}; each byte after the "
                f"first {context} of the split scored once, with at least {context} bytes of "
                "context"
            ),
            "receptive_field": self.model.receptive_field,
            "unit": "bits/byte",
            "split": split,
            "data_source": data.source,
            "num_examples": int(count),
            "baseline": {
                "name": "order-0 entropy of the scored bytes themselves",
                "bits_per_byte": enwik8.order0_entropy_bits(scored_bytes),
                "train_unigram_bits_per_byte": enwik8.unigram_cross_entropy_bits(
                    train.bytes_N, scored_bytes
                ),
            },
        }

    def _decode_fn(self, beam: int, max_len: int) -> Any:
        """A jitted (params, source, source_length) -> (greedy tokens or Beams) of max_len."""
        model, m = self.model, self.config.model
        pt = parallel_text

        def run(params, source_BxS, source_length_B):
            unfolded_B = bytenet.unfolded_lengths(
                source_length_B, a=float(m.unfold_a), b=int(m.unfold_b)
            )
            encoded = model.apply(params, source_BxS, unfolded_B, method=bytenet.ByteNet.encode)
            batch = source_BxS.shape[0]
            step = decoding.cached_step(model, params)
            if beam == 1:
                carry = decoding.init_cached_carry(model, batch, encoded)
                return decoding.greedy(
                    step, carry, batch=batch, max_len=max_len, bos=pt.BOS, eos=pt.EOS
                )
            encoded = decoding.repeat_for_beams(encoded, beam)
            carry = decoding.init_cached_carry(model, batch * beam, encoded)
            return decoding.beam_search(
                step, carry, batch=batch, beam=beam, max_len=max_len, bos=pt.BOS, eos=pt.EOS
            )

        return self.jitted(f"decode_{beam}_{max_len}", run)

    def translate(
        self, params: Any, sources: list[bytes], *, beam: int
    ) -> tuple[list[str], list[bool]]:
        """Translations (greedy when beam is 1) and whether each ended with EOS."""
        multiple = int(self.config.data.pad_multiple)
        longest = max(len(s) for s in sources) + 1
        length = parallel_text.padded_length(longest, multiple)
        source_len = max(length, self._unfolded(length))
        factor = float(self.config.eval.max_length_factor)
        max_len = parallel_text.padded_length(math.ceil(factor * longest) + 10, multiple)
        source = parallel_text.pad_batch(sources, length=source_len, add_eos=True)
        source_length = np.array([len(s) + 1 for s in sources], np.int32)
        out = jax.device_get(self._decode_fn(beam, max_len)(params, source, source_length))
        if beam == 1:
            tokens = np.asarray(out)
            ended = [bool((row == parallel_text.EOS).any()) for row in tokens]
        else:
            tokens = np.asarray(out.tokens_BxKxL)[:, 0]
            ended = [bool(f) for f in np.asarray(out.finished_B)]
        return [parallel_text.decode(row) for row in tokens], ended

    def _heldout_pairs(self, quick: bool) -> tuple[Any, list[bytes], list[bytes]]:
        data = self._split(str(self.config.eval.split))
        limit = QUICK_PAIRS if quick else int(self.config.eval.num_pairs)
        count = min(limit, data.num_pairs) if limit else data.num_pairs
        if count == 0:
            raise DataError(f"{data.source} has no pairs to evaluate")
        return data, list(data.source_lines[:count]), list(data.target_lines[:count])

    def _evaluate_translation(self, params: Any, quick: bool, progress: Any) -> dict:
        config = self.config
        data, sources, references = self._heldout_pairs(quick)
        batch = int(config.eval.batch_size)
        beam = int(config.eval.beam_size)
        starts = range(0, len(sources), batch)
        tracker = progress("eval", 2 * len(starts), unit="batches")
        # The same targets given another pair's source (the sources rolled by one): how much
        # the model's predictions rest on the source rather than on the target prefix.
        mismatched = sources[1:] + sources[:1]
        total = count = mismatched_total = 0.0
        for i in starts:
            pair_batch = self._pair_batch(sources[i : i + batch], references[i : i + batch])
            nats, n = self._summed_nats(params, pair_batch)
            total, count = total + nats, count + n
            wrong_batch = self._pair_batch(mismatched[i : i + batch], references[i : i + batch])
            mismatched_total += self._summed_nats(params, wrong_batch)[0]
            tracker.advance()
        hypotheses, ended = [], []
        for i in starts:
            out, done = self.translate(params, sources[i : i + batch], beam=beam)
            hypotheses += out
            ended += done
            tracker.advance()
        as_text = lambda lines: [line.decode("utf-8", errors="replace") for line in lines]
        source_text, reference_text = as_text(sources), as_text(references)
        train = self._split("train")
        train_bytes = np.frombuffer(b"".join(train.target_lines), np.uint8)
        target_bytes = np.frombuffer(b"".join(references), np.uint8)
        return {
            "bleu": _bleu(hypotheses, reference_text),
            "copy_source_bleu": _bleu(source_text, reference_text),
            "bits_per_char": total / count / math.log(2.0),
            "bits_per_char_mismatched_source": mismatched_total / count / math.log(2.0),
            "scored_bytes": int(count),
            "beam_size": beam,
            "finished_fraction": float(np.mean(ended)),
            "decoding": (
                f"beam {beam} over total log-likelihood, no length normalisation, EOS-terminated "
                "hypotheses only; sacrebleu corpus BLEU (13a) on the decoded UTF-8 text"
            ),
            "examples": [
                {"source": s, "reference": r, "translation": h}
                for s, r, h in zip(source_text[:3], reference_text[:3], hypotheses[:3], strict=True)
            ],
            "unit": "BLEU",
            "split": data.split,
            "data_source": data.source,
            "num_examples": len(sources),
            "baseline": {
                "name": "copy the source sentence (BLEU) / train target-byte unigram (bits)",
                "bleu": _bleu(source_text, reference_text),
                "bits_per_char": enwik8.unigram_cross_entropy_bits(train_bytes, target_bytes),
            },
        }

    def format_eval(self, report: Mapping[str, Any]) -> str:
        """The paper's number beside its baseline, in one line."""
        if self.lm:
            return (
                f"{report['bits_per_byte']:.4f} bits/byte on {report['scored_bytes']:,} "
                f"{report['split']} bytes ({report['num_windows']} windows); order-0 entropy "
                f"{report['baseline']['bits_per_byte']:.4f}, train unigram "
                f"{report['baseline']['train_unigram_bits_per_byte']:.4f}"
            )
        return (
            f"BLEU {report['bleu']:.2f} (copying the source: {report['copy_source_bleu']:.2f}) "
            f"on {report['num_examples']} {report['split']} pairs, beam {report['beam_size']}; "
            f"{report['bits_per_char']:.4f} bits/char ({report['bits_per_char_mismatched_source']:.4f} "
            f"given another pair's source; unigram {report['baseline']['bits_per_char']:.4f})"
        )

    # ---- samples -----------------------------------------------------------------------------

    def _lm_sample(self, params: Any, prompt_1xP: np.ndarray, key: jax.Array) -> np.ndarray:
        num_bytes = int(self.config.sample.num_bytes)
        temperature = float(self.config.sample.temperature)
        model = self.model

        def run(params, prompt, key):
            step = decoding.cached_step(model, params)
            carry = decoding.init_cached_carry(model, prompt.shape[0], None)
            return decoding.sample(
                step, carry, prompt, num_steps=num_bytes, rng=key, temperature=temperature
            )

        return np.asarray(jax.device_get(self.jitted("sample", run)(params, prompt_1xP, key)))

    def sample(self, state: ByteNetState, out_dir: str, *, step: int, progress: Any) -> dict:
        """Generated text (LM) or translations of held-out pairs, as UTF-8 text files."""
        config = self.config
        tracker = progress("sample", 1, unit="passes")
        path = os.path.join(
            out_dir, f"step{step}_" + ("text.txt" if self.lm else "translations.txt")
        )
        if self.lm:
            data = self._split(str(config.eval.split))
            prompt_len = int(config.sample.prompt_bytes)
            num_bytes = int(config.sample.num_bytes)
            if data.num_tokens < prompt_len + num_bytes:
                raise DataError(f"{data.source} is shorter than the prompt and the sample")
            prompt = data.bytes_N[:prompt_len][None].astype(np.int32)
            key = jax.random.fold_in(jax.random.key(int(config.seed)), 4000)
            generated = self._lm_sample(state.params, prompt, key)[0]
            truth = data.bytes_N[prompt_len : prompt_len + num_bytes]
            text = (
                f"== prompt: the first {prompt_len} bytes of the {data.split} split "
                f"({data.source})\n{enwik8.decode(prompt[0])}\n"
                f"== {num_bytes} sampled bytes (temperature {config.sample.temperature}, "
                f"cached decoding)\n{enwik8.decode(generated)}\n"
                f"== the true continuation\n{enwik8.decode(truth)}\n"
            )
            label = "generated text after a held-out prompt"
        else:
            data, sources, references = self._heldout_pairs(quick=False)
            count = min(int(config.sample.num_pairs), len(sources))
            sources, references = sources[:count], references[:count]
            greedy, _ = self.translate(state.params, sources, beam=1)
            beam = int(config.eval.beam_size)
            beamed, _ = self.translate(state.params, sources, beam=beam)
            blocks = [
                f"source:    {s.decode('utf-8', 'replace')}\nreference: "
                f"{r.decode('utf-8', 'replace')}\ngreedy:    {g}\nbeam {beam}:    {b}\n"
                for s, r, g, b in zip(sources, references, greedy, beamed, strict=True)
            ]
            text = f"== {count} {data.split} pairs of {data.source}\n\n" + "\n".join(blocks)
            label = "translations of held-out pairs (greedy and beam)"
        tracker.advance()
        if jax.process_index() != 0:
            return {}
        os.makedirs(out_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return {label: path}


METHOD = ByteNetMethod
