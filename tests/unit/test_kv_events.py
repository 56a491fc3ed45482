"""Precise prefix routing: KV-event wire format, index, feed repair, scorer, subscriber, tokenizer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from thrifty.config import ConfigError, parse_config
from thrifty.engine.launcher import kv_events_endpoints, vllm_args
from thrifty.proxy.balance.balancer import build_balancer
from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.kv_events import (
    AllBlocksCleared, BlockRemoved, BlockStored, KvEventError, KvEventSubscriber, ReplicaKvFeed, decode_batch)
from thrifty.proxy.balance.kv_hub import KvEventHub
from thrifty.proxy.balance.kv_index import ReplicaKvIndex, chain_keys
from thrifty.proxy.balance.pool import ReplicaState
from thrifty.proxy.balance.precise_scorer import PrecisePrefixScorer
from thrifty.proxy.request.tokenize import PromptTokenizer
from thrifty.sim.kv_events import SimKvEventPublisher

BS = 4


def stored(hashes, parent, tokens, bs=BS):
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens,
            "block_size": bs, "lora_id": None, "medium": "GPU", "lora_name": None}


def batch(*events, ts=1.0) -> bytes:
    return msgspec.msgpack.encode([ts, list(events), 0])


def test_decode_map_and_array_forms() -> None:
    ts, evs = decode_batch(batch(stored([11, 12], None, list(range(8))), {"type": "BlockRemoved", "block_hashes": [11],
                                                                           "medium": "GPU"}, {"type": "AllBlocksCleared"}))
    assert ts == 1.0
    assert evs == [BlockStored([11, 12], None, list(range(8)), BS), BlockRemoved([11]), AllBlocksCleared()]
    # older vLLM: tagged arrays in field order
    _, old = decode_batch(msgspec.msgpack.encode([2.0, [["BlockStored", [b"h1"], None, [1, 2, 3, 4], 4, None, "GPU"]]]))
    assert old == [BlockStored([b"h1"], None, [1, 2, 3, 4], 4)]
    with pytest.raises(KvEventError):
        decode_batch(b"\x01\x02")


def test_index_matches_by_content_not_engine_hash() -> None:
    idx = ReplicaKvIndex()
    tokens = list(range(12))
    idx.stored([101, 102], None, tokens[:8], BS)
    idx.stored([103], 102, tokens[8:12], BS)
    assert idx.match(chain_keys(tokens, BS)) == 3
    assert idx.match(chain_keys(tokens[:4] + [99] * 8, BS)) == 1  # diverges in block 2
    assert idx.match(chain_keys([7] + tokens[1:], BS)) == 0  # the chain: block 2 alone is not a prefix
    assert chain_keys(tokens[:7], BS) == chain_keys(tokens[:4], BS)  # a partial tail block has no key
    idx.removed([102])
    assert idx.match(chain_keys(tokens, BS)) == 1
    idx.stored([200], 999, [1, 2, 3, 4], BS)  # unknown parent: cannot be placed in a chain
    assert idx.orphans == 1 and len(idx) == 2


def test_index_memory_is_bounded() -> None:
    idx = ReplicaKvIndex(max_blocks=3)
    idx.stored(list(range(5)), None, list(range(20)), BS)
    assert len(idx) == 3 and idx.dropped == 2


def test_feed_resets_on_cleared_gap_and_restart() -> None:
    feed = ReplicaKvFeed()
    keys = chain_keys(list(range(8)), BS)
    assert feed.receive(0, batch(stored([1, 2], None, list(range(8))))) is None
    assert feed.live and feed.index.match(keys) == 2
    assert feed.receive(1, batch({"type": "AllBlocksCleared"})) is None
    assert feed.index.match(keys) == 0 and feed.stats.resets["cleared"] == 1
    feed.receive(2, batch(stored([1, 2], None, list(range(8)))))
    assert feed.receive(5, batch()) == 3  # a gap: the caller may replay 3..4
    feed.gap_unfilled(5, batch())
    assert feed.index.match(keys) == 0 and feed.stats.resets["gap"] == 1 and feed.last_seq == 5
    feed.receive(6, batch(stored([1, 2], None, list(range(8)))))
    feed.receive(0, batch())  # the engine restarted: its counter starts again
    assert feed.index.match(keys) == 0 and feed.stats.resets["restart"] == 1


def test_sim_publisher_frames_feed_the_same_decoder() -> None:
    pub = SimKvEventPublisher()
    pub.stored(5, None)
    pub.stored(6, 5)
    (topic, seq, payload), = pub.flush(3.0)
    assert topic == b"kv" and int.from_bytes(seq, "big") == 0 and pub.flush(4.0) == []
    feed = ReplicaKvFeed()
    feed.receive(0, payload)
    assert feed.index.match(chain_keys([5, 6, 7], 1)) == 2
    pub.removed(6)
    feed.receive(1, pub.flush(5.0)[0][2])
    assert feed.index.match(chain_keys([5, 6], 1)) == 1


def test_precise_scorer_uses_events_and_falls_back() -> None:
    a, b, c = (ReplicaState(url=u, tier="t") for u in ("http://a", "http://b", "http://c"))
    feeds = {"http://a": ReplicaKvFeed(), "http://b": ReplicaKvFeed()}
    tokens = list(range(12))
    feeds["http://a"].receive(0, batch(stored([1], None, tokens[:4])))
    feeds["http://b"].receive(0, batch(stored([7, 8, 9], None, tokens)))
    scorer = PrecisePrefixScorer(feeds)
    req = PickRequest(blocks=(42,), token_ids=tokens + [1, 2])
    scorer.fallback.picked(req, c)  # c publishes nothing: the approximate model speaks for it
    assert scorer.score(req, [a, b, c]) == pytest.approx([1 / 3, 1.0, 1.0])
    scorer.forget("http://b")
    assert scorer.score(req, [a, b])[1] == 0.0
    bal = build_balancer("precise", kv_feeds=feeds)
    assert bal.pick(PickRequest(token_ids=tokens[:4] + [0] * 8, tokens=10), [b, a]).replica is a


def test_hub_resets_a_replica_the_pool_marks_down() -> None:
    from thrifty.proxy.balance.pool import ReplicaPool

    pool = ReplicaPool({"t": ["http://a"]})
    hub = KvEventHub()
    feed = hub.add("t", "http://a")
    hub.attach_pool(pool)
    feed.receive(0, batch(stored([1], None, [1, 2, 3, 4])))
    pool.tiers["t"][0].mark_down()
    pool.changed("t")
    assert len(feed.index) == 0 and hub.resets[("t", "down")] == 1 and feed.last_seq is None
    hub.remove("http://a")
    assert "http://a" not in hub.feeds
    text = b"".join(m.name.encode() for m in hub.collector().collect())
    assert b"thrifty_kv_index_resets" in text


def test_subscriber_closes_a_gap_from_the_replay_endpoint(tmp_path: Path) -> None:
    """A real ZeroMQ PUB + ROUTER speaking vLLM's protocol; batch 1 never reaches the SUB socket."""
    import zmq

    async def main() -> ReplicaKvFeed:
        ctx = zmq.Context()
        pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
        ep, rep = f"ipc://{tmp_path}/kv.sock", f"ipc://{tmp_path}/replay.sock"
        pub.bind(ep)
        router.bind(rep)
        payloads = [batch(stored([1], None, [1, 2, 3, 4])), batch(stored([2], 1, [5, 6, 7, 8])),
                    batch(stored([3], 2, [9, 10, 11, 12]))]
        feed = ReplicaKvFeed()
        sub = KvEventSubscriber(ep, feed, replay_endpoint=rep)
        sub.start()
        for _ in range(100):  # slow joiner: publish seq 0 until the subscriber has it
            pub.send_multipart([b"kv", (0).to_bytes(8, "big"), payloads[0]])
            await asyncio.sleep(0.02)
            if feed.last_seq == 0:
                break
        pub.send_multipart([b"kv", (2).to_bytes(8, "big"), payloads[2]])  # seq 1 lost
        for _ in range(100):
            if router.poll(20):
                client, empty, start = router.recv_multipart()
                for s in range(int.from_bytes(start, "big"), 3):
                    router.send_multipart([client, b"", b"kv", s.to_bytes(8, "big"), payloads[s]])
                router.send_multipart([client, b"", b"", (-1).to_bytes(8, "big", signed=True), b""])
            await asyncio.sleep(0.01)
            if feed.last_seq == 2:
                break
        await sub.close()
        pub.close(0)
        router.close(0)
        ctx.term()
        return feed

    feed = asyncio.run(main())
    assert feed.last_seq == 2 and feed.stats.resets["gap"] == 0
    assert feed.index.match(chain_keys(list(range(1, 13)), BS)) == 3


def _tiny_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "system": 3, "user": 4, "assistant": 5, "hi": 6, "be": 7, "brief": 8}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ bos_token }}{{ m['role'] }} {{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ bos_token }}assistant{% endif %}")


def test_tokenizer_renders_the_chat_template(tmp_path: Path) -> None:
    _tiny_tokenizer(tmp_path)
    tok = PromptTokenizer.from_model_dir(tmp_path)
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert tok.encode("chat", body) == [1, 3, 7, 8, 2, 1, 4, 6, 2, 1, 5]
    assert tok.encode("completions", {"prompt": [9, 9]}) == [9, 9]
    assert tok.encode("chat", {"messages": "nope"}) == []
    with pytest.raises(ValueError, match="tokenizer.json"):
        PromptTokenizer.from_model_dir(tmp_path / "missing")


def _tier(**replicas: object) -> dict:
    return {"tiers": [{"name": "t", "model": "m", "price": {"gpu_hour": 1}, "engine": {"kind": "external"},
                       "replicas": {"urls": ["http://a:1", "http://b:1"], **replicas}}]}


def test_config_and_launcher_kv_events() -> None:
    cfg = parse_config(_tier(kv_events=["tcp://a:5557", ""]))
    assert cfg.tiers[0].replicas.kv_events == ["tcp://a:5557", ""]
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.replicas: .*kv_events has 1 endpoints for 2 urls"):
        parse_config(_tier(kv_events=["tcp://a:5557"]))
    with pytest.raises(ConfigError, match="not tcp://host:port"):
        parse_config(_tier(kv_events=["http://a", ""]))
    tier = cfg.tiers[0]
    ep, replay = kv_events_endpoints("t", 8100)
    args = vllm_args(tier, port=8100, kv_events=(ep, replay))
    flag = json.loads(args[args.index("--kv-events-config") + 1])
    assert flag == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": ep, "topic": "kv", "replay_endpoint": replay}
    assert "--kv-events-config" not in vllm_args(tier, port=8100)


def test_bench_balance_multi_tenant_and_azure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from thrifty.bench import balance

    assert balance.main(["--scenario", "multi-tenant", "--tenants", "20", "--qps", "4", "--duration-s", "30",
                         "--replicas", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for pol in ("round_robin", "least_loaded", "thrifty", "precise"):
        assert out[f"{pol}_ttft_p90_s"] >= out[f"{pol}_ttft_p50_s"] > 0
    assert out["precise_hit_rate"] > out["round_robin_hit_rate"]  # affinity from events keeps contexts cached
    csv = tmp_path / "azure.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n")
    with pytest.raises(SystemExit, match="no hash_ids"):
        balance.main(["--trace", str(csv)])
