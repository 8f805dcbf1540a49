"""The one HTTP load driver: simulated annotators voting against a running prefloop app.

    python bench/http_load.py --url http://127.0.0.1:7860 --names ann0,ann1 --password-env PF_PW --votes 20

Each simulated annotator is its own client session (its own Gradio ``session_hash``, so the
server-side ``gr.State`` that holds the shown pair is theirs), signs in through the app's
sign-in route (``POST /prefloop/sign-in``, which answers with the HttpOnly session cookie that
the session's HTTP client then sends, as a browser does) and then casts votes through
``/vote_left`` | ``/vote_right`` | ``/vote_tie`` | ``/vote_both_bad``, exactly the events the
buttons fire. It speaks Gradio's queue protocol
(``POST /gradio_api/queue/join`` then the session's ``GET /gradio_api/queue/data`` event stream)
directly with httpx: thin enough that the client adds little to what it measures, and the
``process_completed`` message carries the server's own handler time (``output.duration``), so
client-side and server-side latency are both recorded.

For every vote it records the latency of "vote and get the next pair" and whether the server
acknowledged it (the response's message says "Recorded"). A vote whose next screen is the
waiting screen (queue empty) is acknowledged but marked ``waited``; the annotator then polls
``/next_pair`` until a pair arrives (a waiting screen is not a vote). Used by tests/test_load.py,
tests/test_crash.py and bench/serving.py; ``AppServer`` starts ``prefloop serve`` for them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
API = "/gradio_api"
SIGN_IN = "/prefloop/sign-in"  # prefloop.ui.server.SIGN_IN_PATH
SESSION_COOKIE = "prefloop_session"  # prefloop.ui.server.SESSION_COOKIE
SIDES = ("left", "right", "tie", "both_bad")
ACK_PREFIX = "Recorded"
WAITING_MARK = "pf-waiting"  # the waiting screen's prompt box (ui/annotate.py _waiting_screen)
MESSAGE, PROMPT = 4, 1  # output positions in ui/annotate.py screen_outputs


class LoadError(Exception):
    """The app refused or failed a call (an error event, a dropped stream, a bad response)."""


# --------------------------------------------------------------------------------------------
# one client session over Gradio's queue protocol
# --------------------------------------------------------------------------------------------
class GradioSession:
    """One browser tab's worth of state: a session hash, a keep-alive HTTP connection and (after
    ``sign_in``) the session cookie in that connection's cookie jar."""

    def __init__(self, url: str, fn_index: dict[str, int], timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.fn_index = fn_index
        self.session_hash = uuid.uuid4().hex[:12]
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))

    def sign_in(self, name: str, password: str) -> str:
        """Sign in through the app's route; the cookie it sets rides on every later call.
        Returns the server's message; LoadError when refused."""
        answer = self.http.post(f"{self.url}{SIGN_IN}", json={"name": name, "password": password})
        try:
            message = answer.json().get("message", "")
        except ValueError:
            message = answer.text[:200]
        if answer.status_code != 200 or SESSION_COOKIE not in self.http.cookies:
            raise LoadError(f"sign-in refused ({answer.status_code}): {message}")
        return message

    def call(self, api_name: str, data: list) -> tuple[list, float | None]:
        """Run one event; returns (output values, server-side handler seconds)."""
        for message in queue_messages(
            self.http, f"{self.url}{API}", self.fn_index[api_name], data, self.session_hash
        ):
            if message.get("msg") == "process_completed":
                output = message.get("output") or {}
                if not message.get("success"):
                    raise LoadError(f"{api_name}: {output.get('error') or 'failed'}")
                return output["data"], output.get("duration")
        raise LoadError(f"{api_name}: the event stream ended before the result")

    def close(self) -> None:
        self.http.close()


def queue_messages(http: httpx.Client, api_base: str, fn_index: int, data: list, session_hash: str,
                   headers: dict | None = None):
    """Run one event through Gradio's queue the way the browser does (``queue/join``, then the
    session's event stream) and yield its messages up to ``process_completed`` or the stream's end.

    The session is whatever cookie ``http`` (or ``headers``) carries to ``queue/join``: the
    handler reads it from the request that joined the queue."""
    joined = http.post(f"{api_base}/queue/join", headers=headers, json={
        "data": data, "fn_index": fn_index, "session_hash": session_hash,
        "event_data": None, "trigger_id": None,
    })
    if joined.status_code != 200:
        raise LoadError(f"fn {fn_index}: queue/join answered {joined.status_code}: {joined.text[:200]}")
    event_id = joined.json()["event_id"]
    with http.stream("GET", f"{api_base}/queue/data", params={"session_hash": session_hash},
                     headers=headers) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") not in (None, event_id):
                continue
            if message.get("msg") == "close_stream" or message.get("message") == "server_stopped":
                return
            yield message
            if message.get("msg") == "process_completed":
                return


def fn_indexes(url: str) -> dict[str, int]:
    """api_name -> fn_index, read from the app's /config."""
    config = httpx.get(f"{url.rstrip('/')}/config", timeout=30).json()
    return {
        dep["api_name"]: dep["id"] for dep in config["dependencies"] if dep.get("api_name")
    }


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class Vote:
    annotator: str
    seq: int  # this annotator's n-th vote attempt, from 0
    side: str
    started: float  # time.monotonic() when sent
    latency_s: float | None = None  # client side: send -> next screen received
    server_s: float | None = None  # server side: the handler's own time (Gradio's duration)
    acknowledged: bool = False
    waited: bool = False  # acknowledged, but the next screen was the waiting screen
    message: str = ""
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(round(q / 100 * len(ordered) + 0.499999)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoadResult:
    votes: list[Vote] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # sign-in and polling failures
    wall_s: float = 0.0
    waiting_polls: int = 0  # /next_pair calls that found the queue empty

    @property
    def acknowledged(self) -> list[tuple[str, int, str]]:
        """(annotator, seq, side) of every vote the server said it recorded."""
        return [(v.annotator, v.seq, v.side) for v in self.votes if v.acknowledged]

    def acknowledged_by(self) -> dict[str, list[str]]:
        """annotator -> the sides they had acknowledged, in the order they voted."""
        out: dict[str, list[str]] = {}
        for vote in sorted(self.votes, key=lambda v: (v.annotator, v.seq)):
            if vote.acknowledged:
                out.setdefault(vote.annotator, []).append(vote.side)
        return out

    def latencies(self, server: bool = False) -> list[float]:
        """Seconds per acknowledged vote that was answered with a pair (queue not empty)."""
        attr = "server_s" if server else "latency_s"
        return [
            getattr(v, attr) for v in self.votes
            if v.acknowledged and not v.waited and getattr(v, attr) is not None
        ]

    def summary(self) -> dict:
        client, server = self.latencies(), self.latencies(server=True)
        ms = lambda s: None if s is None else round(s * 1000, 1)  # noqa: E731
        acked = sum(v.acknowledged for v in self.votes)
        return {
            "votes_sent": len(self.votes),
            "acknowledged": acked,
            "waited": sum(v.waited for v in self.votes),
            "failed": sum(v.error is not None for v in self.votes),
            "other_errors": len(self.errors),
            "wall_s": round(self.wall_s, 2),
            "votes_per_s": round(acked / self.wall_s, 1) if self.wall_s else None,
            **{f"p{q}_ms": ms(percentile(client, q)) for q in (50, 95, 99)},
            **{f"server_p{q}_ms": ms(percentile(server, q)) for q in (50, 95, 99)},
        }


# --------------------------------------------------------------------------------------------
# annotators
# --------------------------------------------------------------------------------------------
def _is_waiting(outputs: list) -> bool:
    return WAITING_MARK in str(outputs[PROMPT] or "")


def _annotate(
    url: str, fn_index: dict[str, int], name: str, password: str, votes: int, think_s: float,
    rng: random.Random, result: LoadResult, lock: threading.Lock, stop: threading.Event,
    deadline: float, start_gate: threading.Barrier | None,
) -> None:
    session = GradioSession(url, fn_index)
    try:
        try:
            session.sign_in(name, password)
            outputs, _ = session.call("next_pair", [])
        except (LoadError, httpx.HTTPError) as error:
            with lock:
                result.errors.append(f"{name}: {error}")
            if start_gate is not None:
                start_gate.abort()
            return
        if start_gate is not None:
            try:
                start_gate.wait()
            except threading.BrokenBarrierError:
                pass  # another annotator could not sign in: vote anyway, result.errors says who
        for seq in range(votes):
            while _is_waiting(outputs):  # nothing to vote on: poll like the page's timer does
                if stop.is_set() or time.monotonic() > deadline:
                    return
                with lock:
                    result.waiting_polls += 1
                time.sleep(0.5)
                try:
                    outputs, _ = session.call("next_pair", [])
                except (LoadError, httpx.HTTPError) as error:
                    with lock:
                        result.errors.append(f"{name}: next_pair: {error}")
                    return
            if stop.is_set() or time.monotonic() > deadline:
                return
            if think_s:
                time.sleep(rng.expovariate(1 / think_s))
            side = rng.choice(SIDES)
            vote = Vote(name, seq, side, time.monotonic())
            with lock:
                result.votes.append(vote)
            try:
                outputs, vote.server_s = session.call(f"vote_{side}", [None, [], "", ""])
            except (LoadError, httpx.HTTPError) as error:
                vote.error = f"{type(error).__name__}: {error}"
                return  # a failed call (server gone): this annotator stops
            vote.latency_s = time.monotonic() - vote.started
            vote.message = str(outputs[MESSAGE] or "")
            vote.acknowledged = vote.message.startswith(ACK_PREFIX)
            vote.waited = _is_waiting(outputs)
            if not vote.acknowledged:
                vote.error = f"not acknowledged: {vote.message[:200]}"
    finally:
        session.close()


def run_load(
    url: str,
    names: list[str],
    password: str,
    votes: int,
    *,
    think_s: float = 0.0,
    seed: int = 0,
    timeout_s: float = 600.0,
    stop: threading.Event | None = None,
    result: LoadResult | None = None,
) -> LoadResult:
    """Run ``len(names)`` annotators at once, each casting ``votes`` votes; returns the result.

    ``think_s`` > 0 waits an exponential think time with that mean before each vote. ``stop``
    lets a caller end the run early; votes in flight then are left unacknowledged. Pass your own
    ``result`` to watch it fill while the run goes on (a crash test kills the server mid-run).
    Example: run_load("http://127.0.0.1:7860", ["ann0", "ann1"], "pw", votes=10).summary()
    """
    fn_index = fn_indexes(url)
    stop = stop or threading.Event()
    result, lock = result if result is not None else LoadResult(), threading.Lock()
    gate = threading.Barrier(len(names) + 1)  # the clock starts once everyone is signed in
    deadline = time.monotonic() + timeout_s
    threads = [
        threading.Thread(
            target=_annotate,
            args=(url, fn_index, name, password, votes, think_s, random.Random(f"{seed}-{name}"),
                  result, lock, stop, deadline, gate),
            name=f"annotator-{name}", daemon=True,
        )
        for name in names
    ]
    for thread in threads:
        thread.start()
    try:
        gate.wait(timeout=timeout_s)
    except threading.BrokenBarrierError:
        pass  # someone could not sign in: the others run anyway; result.errors says who
    started = time.monotonic()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    result.wall_s = time.monotonic() - started
    return result


# --------------------------------------------------------------------------------------------
# a server to drive
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``prefloop serve`` (via app.py) as a child process on a free loopback port."""

    def __init__(self, home: Path, *, sampler: bool = True, port: int | None = None, log_name: str = "server.log"):
        self.home = Path(home)
        self.sampler = sampler
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / log_name
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> "AppServer":
        env = {
            **os.environ, "PREFLOOP_HOME": str(self.home), "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(self.port)]
        if not self.sampler:
            command.append("--no-sampler")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/config", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the app did not start:\n" + self.log_tail())
            time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, like a power cut for the process."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> "AppServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# a home to serve
# --------------------------------------------------------------------------------------------
def prepare_home(
    home: Path,
    *,
    base_model: str | None,
    annotators: int | list[str],
    password: str,
    pairs: int,
    judgments_per_pair: int,
    queue_target: int,
    max_new_tokens: int | None = 48,
    sample: bool = True,
    echo=print,
) -> list[str]:
    """v0 (``prefloop init``), annotators (names, or N for ann0..annN-1), settings, and pairs.

    ``sample=False`` stores canned texts instead of sampling them from v0 (seconds instead of
    minutes; the server's own sampler still samples real pairs while it runs). Sets
    PREFLOOP_HOME to ``home`` in this process. Returns the annotator names.
    """
    os.environ["PREFLOOP_HOME"] = str(home)
    env = {**os.environ, "PF_LOAD_PW": password, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    init = [sys.executable, "-c", "import sys; from prefloop.cli import cli; sys.exit(cli())", "init",
            "--admin-password-env", "PF_LOAD_PW"]
    if base_model:
        init += ["--base-model", str(base_model)]
    started = time.monotonic()
    done = subprocess.run(init, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"prefloop init failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    echo(f"init: {time.monotonic() - started:.1f} s")

    from prefloop.annotate import auth
    from prefloop.annotate.sampler import sample_pairs
    from prefloop.db.store import Store

    store = Store()
    store.set_setting("judgments_per_pair", judgments_per_pair)
    store.set_setting("queue_target", queue_target)
    if max_new_tokens:  # None: the production setting
        store.set_setting("sampling", {**store.get_setting("sampling"), "max_new_tokens": max_new_tokens})
    names = annotators if isinstance(annotators, list) else [f"ann{i}" for i in range(annotators)]
    for name in names:
        if store.annotator_by_name(name) is None:
            auth.create_user(store, name, password, "annotator")
    started = time.monotonic()
    made = 0
    if not sample:
        made = _canned_pairs(store, pairs)
    while made < pairs:
        made += len(sample_pairs(store, "v0", n_prompts=min(64, pairs - made)))
    echo(f"{'sampled' if sample else 'stored canned'} {made} pairs: {time.monotonic() - started:.1f} s")
    store.close()
    return names


def _canned_pairs(store, pairs: int) -> int:
    """``pairs`` pairs of v0 with distinct made-up responses, on the train prompts."""
    version = store.require_version("v0")
    prompts = store.list_prompts(split="train", limit=pairs)
    for i in range(pairs):
        prompt = prompts[i % len(prompts)]
        store.add_pair(
            prompt["id"],
            {"version_id": version["id"], "text": f"First answer {i}: short.", "seed": 2 * i, "params": {}},
            {"version_id": version["id"], "text": f"Second answer {i}, a longer one with details.",
             "seed": 2 * i + 1, "params": {}},
        )
    return pairs


def stored_sides(store) -> dict[str, list[str]]:
    """annotator -> the screen side of each stored vote, in the order stored (judgment id).

    The database stores generations ('a'/'b'), not screen sides; the judgment's recorded
    ``left_generation_id`` turns it back into the side the annotator clicked.
    """
    out: dict[str, list[str]] = {}
    for j in store.judgments():
        if j["choice"] in ("tie", "both_bad"):
            side = j["choice"]
        else:
            left_is_a = j["left_generation_id"] == j["generation_a_id"]
            side = "left" if (j["choice"] == "a") == left_is_a else "right"
        out.setdefault(j["annotator"], []).append(side)
    return out


def vote_problems(
    store, result: LoadResult, *, in_flight_ok: bool = False, ignore: tuple[str, ...] = ()
) -> list[str]:
    """What is wrong between what the server acknowledged and what the database holds.

    Every acknowledged vote must be stored exactly once, in order, and nothing else stored. With
    ``in_flight_ok`` (a crash test), each annotator may have one more stored vote: the one in
    flight when the server died, provided it is the vote they last sent. Annotators in
    ``ignore`` (votes a test stored itself) are left out of the per-annotator comparison.
    """
    problems = []
    judgments = store.judgments()
    keys = [(j["pair_id"], j["annotator"]) for j in judgments]
    if len(keys) != len(set(keys)):
        problems.append("a (pair, annotator) is stored twice")
    acked, stored = result.acknowledged_by(), stored_sides(store)
    last_sent = {}
    for vote in sorted(result.votes, key=lambda v: v.seq):
        last_sent[vote.annotator] = vote
    for name in sorted((set(acked) | set(stored)) - set(ignore)):
        want, have = acked.get(name, []), stored.get(name, [])
        if have == want:
            continue
        extra = have[len(want):]
        last = last_sent.get(name)
        if (
            in_flight_ok and have[: len(want)] == want and len(extra) == 1 and last is not None
            and not last.acknowledged and last.side == extra[0]
        ):
            continue
        problems.append(f"{name}: acknowledged {want} but stored {have}")
    counted: dict[int, int] = {}
    for j in judgments:
        counted[j["pair_id"]] = counted.get(j["pair_id"], 0) + 1
    for pair_id, count in counted.items():
        if store.pair(pair_id)["judgments_count"] != count:
            problems.append(f"pair {pair_id}: judgments_count differs from its {count} judgments")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--names", required=True, help="comma-separated annotator names")
    parser.add_argument("--password-env", default="PF_PW", metavar="VAR")
    parser.add_argument("--votes", type=int, default=20, help="votes per annotator")
    parser.add_argument("--think-s", type=float, default=0.0, help="mean think time per vote")
    args = parser.parse_args()
    result = run_load(args.url, args.names.split(","), os.environ[args.password_env], args.votes,
                      think_s=args.think_s)
    print(json.dumps(result.summary(), indent=1))
    for error in result.errors[:10]:
        print("error:", error)


if __name__ == "__main__":
    main()
