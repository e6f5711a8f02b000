"""Prompt changes mid-stream: applied from the next block boundary, the history kept (the server's callable
prompt, and the probe that measures how many blocks a switch takes to show)."""

from __future__ import annotations

import json

import pytest

from omniforcing.data.media import read_av
from omniforcing.serving.switch_probe import prompt_switch_distances

OLD = "a green circle bounces; the circle rings low, over a low hum"
NEW = "a white triangle bounces; the triangle clinks high"


def test_a_prompt_change_applies_at_the_next_block_boundary(serve):
    live = serve()
    connection, response = live.open_stream(prompt=OLD, seed=5, seconds=4, lead_seconds=1)
    stream_id = response.getheader("X-Stream-Id")
    # pacing: with nothing played and a 1-s lead the generator stops after blocks 0 and 1 (media 1.04 s)
    live.wait_for(lambda m: m["streams"][0]["state"] == "waiting", "the generator to reach the lead")
    assert live.metrics()["streams"][0]["blocks"] == 2
    status, _, body = live.request("POST", f"/streams/{stream_id}/prompt", {"prompt": NEW})
    assert status == 200 and json.loads(body) == {"prompt": NEW, "from_block": 2}
    live.request("POST", f"/streams/{stream_id}/progress", {"played_seconds": 1.5})  # room for blocks 2, 3
    live.wait_for(lambda m: m["streams"][0]["blocks"] == 4 and m["streams"][0]["state"] == "waiting",
                  "blocks 2 and 3")
    status = json.loads(live.request("GET", f"/streams/{stream_id}")[2])
    assert status["prompt"] == NEW and status["prompt_switches"] == [{"block": 2, "prompt": NEW}]
    live.request("POST", f"/streams/{stream_id}/progress", {"played_seconds": 100})
    switched = read_av(response.read())
    connection.close()
    reference = read_av(live.request("POST", "/streams", {"prompt": OLD, "seed": 5, "seconds": 4})[2])
    assert switched.video.shape == reference.video.shape == (97, 32, 32, 3)
    difference = (switched.video.float() - reference.video.float()).abs().mean(dim=(1, 2, 3))
    # blocks 0 and 1 (frames 0..24) were made before the change: the same pictures up to x264 noise;
    # block 2 (frames 25..48) is the first with the new prompt
    assert difference[:25].max() < 1.0
    assert difference[25:49].mean() > 2 * max(float(difference[:25].mean()), 0.25)


def test_the_switch_shows_from_its_block_on_and_leaves_earlier_blocks_untouched(generator):
    rows = prompt_switch_distances(generator, OLD, NEW, switch_block=2, seconds=4, seed=1)
    assert [r.index for r in rows] == [0, 1, 2, 3, 4]
    assert all(r.switched_to_old == 0.0 for r in rows[:2])  # same noise, same prompt: identical blocks
    assert all(r.switched_to_old > 0.0 for r in rows[2:])
    assert rows[2].shown > 0.5  # most of the new prompt's effect is in the very first switched block
    assert all(r.remaining > 0.0 for r in rows[2:])  # the history made under the old prompt stays


def test_the_probe_refuses_a_switch_outside_the_stream(generator):
    with pytest.raises(ValueError, match="switch_block must be in 1..4"):
        prompt_switch_distances(generator, OLD, NEW, switch_block=5, seconds=4)
