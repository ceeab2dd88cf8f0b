"""What the backends that decode in this process share (specdec's engine, transformers'
generate): conversations turn by turn, skipped requests, timing with energy and peak memory,
and the single-server queue of Poisson mode.

A subclass provides ``generate(prompt_ids, GenerationConfig)`` and
``generate_batch(list_of_prompt_ids, GenerationConfig)``, plus ``prepare()`` to load its models.
"""

from __future__ import annotations

from datetime import datetime, timezone

import torch

from specdec.bench import results as R
from specdec.bench.backends.base import Batch, MethodSpec, RunContext
from specdec.bench.backends.local_models import batch_size
from specdec.bench.workloads import Job, Prompt, encode_turns, request_seed
from specdec.engine.loop import GenerationConfig
from specdec.engine.sampling import SamplingParams
from specdec.errors import ContextOverflow, UsageError

#: methods whose records carry no draft length
NON_DRAFTING = ("target", "hf_generate")


def generation_config(config, spec: MethodSpec, seed: int | None) -> GenerationConfig:
    """The per-request GenerationConfig of ``spec`` (same budget and sampling for every method)."""
    sampling = SamplingParams(temperature=config.get("generation.temperature"), top_k=config.get("generation.top_k"),
                              top_p=config.get("generation.top_p"))
    return GenerationConfig(
        max_new_tokens=config.get("generation.max_tokens"),
        sampling=sampling,
        gamma=spec.gamma or config.get("speculative.num_speculative_tokens"),
        seed=seed,
        stop_strings=tuple(config.get("generation.stop_strings")),
        ignore_eos=config.get("generation.ignore_eos"),
    )


def skipped_record(reason: str, prompt_tokens: int) -> dict:
    """The record of a request that was not run (it does not fit the context, or an earlier turn
    of its conversation did not): kept in responses.jsonl so a resume does not retry it, counted
    by the summary, left out of every figure."""
    return {"skipped": reason, "prompt_tokens": prompt_tokens, "text": "", "token_ids": [],
            "finished_utc": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class InProcessBackend:
    """Base of the backends whose engine runs in this process on the run's shared models."""

    in_process = True

    def __init__(self, spec: MethodSpec, run: RunContext) -> None:
        self.spec = spec
        self.name = spec.backend
        self.run = run
        self.config = run.config
        self.models = run.models
        self._free_at: dict = {}  # repeat -> virtual time this method's single server is free (Poisson)

    # --- what subclasses provide -----------------------------------------------------------
    def prepare(self) -> None:
        raise NotImplementedError

    def generate(self, prompt_ids, config: GenerationConfig):
        raise NotImplementedError

    def generate_batch(self, prompts: list[list[int]], config: GenerationConfig):
        raise NotImplementedError

    # --- the Backend interface --------------------------------------------------------------
    def __enter__(self):
        self.models.configure_threads(self.run.log)
        self.prepare()
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def admit(self, prompts: list[Prompt]) -> list[Prompt]:
        """Leave out prompts whose first turn plus ``generation.max_tokens`` exceeds the target's
        context (or ``engine.max_batch_length``), naming them, rather than failing mid-run on
        one long prompt."""
        limit = self.models.engine.context_limit
        cap = self.config.get("engine.max_batch_length")
        if cap is not None:
            # MAX_BATCH_LENGTH caps prompt + new tokens per row: longer prompts are left out,
            # named (never truncated: a cut prompt would be another request).
            limit = min(limit, cap) if limit else cap
        if not limit:
            return prompts
        budget = self.config.get("generation.max_tokens")
        kept, dropped = [], []
        for prompt in prompts:
            length = len(self._encode([{"role": "user", "content": prompt.turns[0]}]))
            (kept if length + budget <= limit else dropped).append((prompt, length))
        if dropped:
            names = ", ".join(f"{p.id} ({n} tokens)" for p, n in dropped[:5]) + (" ..." if len(dropped) > 5 else "")
            what = f"engine.max_batch_length {cap}" if cap is not None and limit == cap else f"the model's context of {limit}"
            self.run.log(f"left out {len(dropped)} prompt(s) that do not fit {what} tokens with {budget} new tokens: {names}")
        if not kept:
            raise UsageError(f"no prompt fits the model's context of {limit} tokens with {budget} new tokens; "
                             "lower generation.max_tokens or pick shorter prompts")
        return [p for p, _ in kept]

    def warmup(self, prompt: Prompt, count: int) -> None:
        """``count`` generations of the first prompt's first turn, in the batch shape the run
        uses (a static cache and its graphs are sized here); excluded from every figure."""
        ids = self._encode([{"role": "user", "content": prompt.turns[0]}])
        size = batch_size(self.config)
        for i in range(count):
            gen = generation_config(self.config, self.spec, self.config.get("generation.seed") + i)
            if size > 1:
                self.generate_batch([ids] * size, gen)
            else:
                self.generate(ids, gen)

    def run_batch(self, batch: Batch, on_record) -> None:
        """The batch's conversations turn by turn: turn t of every row after turn t - 1 of all
        of them. One row is decoded alone; several are decoded together as one batch."""
        jobs = batch.jobs
        history: dict[int, list[dict]] = {i: [] for i in range(len(jobs))}
        for turn_index in range(max(len(job.prompt.turns) for job in jobs)):
            turn = turn_index + 1
            rows = [i for i, job in enumerate(jobs) if turn_index < len(job.prompt.turns)]
            keys = {i: R.record_key(batch.row, jobs[i].prompt_id, turn, jobs[i].repeat) for i in rows}
            messages = {i: history[i] + [{"role": "user", "content": jobs[i].prompt.turns[turn_index]}] for i in rows}
            todo = []
            for i in rows:
                if keys[i] in batch.done:
                    self._catch_up(batch.done[keys[i]])
                    continue
                ids = self._encode(messages[i])
                try:
                    if any(h.get("role") == "skipped" for h in history[i]):
                        raise ContextOverflow("an earlier turn of this conversation was skipped")
                    if len(jobs) > 1:
                        self.models.engine.check_fits(len(ids), self.config.get("generation.max_tokens"))
                    todo.append((i, ids))
                except ContextOverflow as error:
                    # Recorded, not fatal: a resume skips it too instead of failing again.
                    self._emit(skipped_record(str(error), len(ids)), batch, jobs[i], turn, keys[i], on_record)
            if len(jobs) == 1 and todo:
                self._run_one(batch, jobs[0], turn, keys[0], todo[0][1], on_record)
            elif todo:
                self._run_rows(batch, [jobs[i] for i, _ in todo], turn, [keys[i] for i, _ in todo],
                               [ids for _, ids in todo], on_record)
            for i in rows:
                record = batch.done[keys[i]]
                role = "skipped" if record.get("skipped") else "assistant"
                history[i] = messages[i] + [{"role": role, "content": record["text"]}]

    # --- measuring --------------------------------------------------------------------------
    def _encode(self, messages: list[dict]) -> list[int]:
        return encode_turns(self.models.target.tokenizer, messages, self.config.get("workload.chat_template"))

    def _seed(self, job: Job, turn: int) -> int:
        return request_seed(self.config.get("generation.seed"), job.prompt_id, turn, job.repeat)

    def _run_one(self, batch: Batch, job: Job, turn: int, key: str, ids: list[int], on_record) -> None:
        seed = self._seed(job, turn)
        try:
            result, gen, energy, peak = self._timed(lambda gen: self.generate(ids, gen), seed)
            record = self._record(result, gen, seed, peak)
            record["energy_j"] = energy
            self._queue(record, job.repeat, job.arrival_s if turn == 1 else None)
        except ContextOverflow as error:
            record = skipped_record(str(error), len(ids))
        self._emit(record, batch, job, turn, key, on_record)

    def _run_rows(self, batch: Batch, jobs: list[Job], turn: int, keys: list[str], ids: list[list[int]],
                  on_record) -> None:
        """Several rows decoded together; one record per row (the batch's energy on every row,
        marked as the batch's: it is not any one request's)."""
        lead = jobs[0]
        seed = self._seed(lead, turn)
        results, gen, energy, peak = self._timed(lambda gen: self.generate_batch(ids, gen), seed)
        records = []
        for result in results:
            record = self._record(result, gen, seed, peak)
            record.setdefault("batch_size", len(ids))
            record.update(batch_energy_j=energy, energy_j=None)
            records.append(record)
        self._queue_rows(records, lead.repeat, [job.arrival_s if turn == 1 else None for job in jobs])
        batch_id = f"{batch.row}|{lead.prompt_id}|{turn}|{lead.repeat}"
        for job, key, record in zip(jobs, keys, records):
            record["batch_id"] = batch_id
            self._emit(record, batch, job, turn, key, on_record)

    def _emit(self, record: dict, batch: Batch, job: Job, turn: int, key: str, on_record) -> None:
        record.update(key=key, method=batch.row, backend=self.name, prompt_id=job.prompt_id,
                      category=job.prompt.category, turn=turn, repeat=job.repeat,
                      prompt=job.prompt.turns[turn - 1])
        if not record.get("skipped"):
            record.setdefault("arrival_s", None)
            record.setdefault("queue_wait_s", 0.0)
        record["finished_utc"] = _now()
        on_record(record)

    def _timed(self, run, seed):
        """``run(generation_config)`` between two energy readings and a CUDA peak-memory reset;
        returns (its result, the config, joules or None, peak bytes or None)."""
        device = self.models.device
        monitor = self.run.monitor
        gen = generation_config(self.config, self.spec, seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = monitor.energy_j() if monitor is not None else None
        result = run(gen)
        after = monitor.energy_j() if monitor is not None else None
        energy = after - before if before is not None and after is not None else None
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return result, gen, energy, peak

    def _record(self, result, gen: GenerationConfig, seed: int, peak) -> dict:
        """One request's record: the engine's stats plus what the harness adds."""
        stats = dict(result.stats)
        record = {**stats}
        record["gamma"] = gen.gamma if self.name not in NON_DRAFTING else None
        record["seed"] = seed
        record["greedy"] = gen.sampling.greedy
        record["service_ttft_s"] = stats.get("ttft_s")
        record["service_e2e_s"] = stats.get("e2e_s")
        record["peak_mem_bytes"] = peak
        record["text"] = result.text
        record["token_ids"] = list(result.token_ids)
        return record

    # --- Poisson mode: one FIFO server per method on a virtual clock ---------------------------
    def _queue(self, record: dict, repeat: int, arrival: float | None) -> None:
        """Queue wait and latency including it. Poisson mode simulates a FIFO single server on a
        virtual clock per method from the measured service times (so methods can still alternate
        per prompt); the turns of a conversation are served back to back."""
        if self.config.get("load.mode") != "poisson":
            record.update(arrival_s=None, queue_wait_s=0.0)
            return
        free_at = self._free_at.get(repeat, 0.0)
        arrival = free_at if arrival is None else arrival
        start = max(arrival, free_at)
        self._free_at[repeat] = start + record["service_e2e_s"]
        self._wait(record, arrival, start - arrival)

    def _queue_rows(self, records: list[dict], repeat: int, arrivals: list) -> None:
        """Static batching on the same clock: a batch starts when the server is free and its last
        request has arrived; each request waits from its own arrival."""
        if self.config.get("load.mode") != "poisson":
            for record in records:
                record.update(arrival_s=None, queue_wait_s=0.0)
            return
        free_at = self._free_at.get(repeat, 0.0)
        arrivals = [a if a is not None else free_at for a in arrivals]
        start = max([free_at, *arrivals])
        self._free_at[repeat] = start + max(r["batch_e2e_s"] if r.get("batch_e2e_s") is not None else r["service_e2e_s"]
                                            for r in records)
        for record, arrival in zip(records, arrivals):
            self._wait(record, arrival, start - arrival)

    @staticmethod
    def _wait(record: dict, arrival: float, wait: float) -> None:
        record.update(arrival_s=arrival, queue_wait_s=wait, e2e_s=record["service_e2e_s"] + wait,
                      ttft_s=record["service_ttft_s"] + wait if record.get("service_ttft_s") is not None else None)

    def _catch_up(self, record: dict) -> None:
        """A recorded request of a resumed Poisson run moves the virtual clock as it did."""
        if self.config.get("load.mode") == "poisson" and not record.get("skipped") and record.get("arrival_s") is not None:
            end = record["arrival_s"] + record["queue_wait_s"] + record["service_e2e_s"]
            self._free_at[record["repeat"]] = max(self._free_at.get(record["repeat"], 0.0), end)
