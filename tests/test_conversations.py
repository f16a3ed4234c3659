import json
import random
from pathlib import Path

import pytest

from bagstress_locust.conversations import (
    THINK_TIME_MAX_S,
    THINK_TIME_MIN_S,
    ConversationError,
    load_conversations,
    plan_turns,
    think_time,
)
from bagstress_locust.models import NoModelsError, eligible_models, read_model_filter

from .conftest import CONVERSATIONS

SCRIPT = {
    "conversation_id": "c1",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "u3"},
    ],
}


def write(directory: Path, name: str, content: object) -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def problems_for(tmp_path: Path, content: object) -> list[str]:
    write(tmp_path, "bad.json", content)
    with pytest.raises(ConversationError) as caught:
        load_conversations(tmp_path)
    return caught.value.problems


def test_shipped_conversations_are_valid_and_varied() -> None:
    conversations = load_conversations(CONVERSATIONS)
    assert len(conversations) == 10
    turns = [c.user_turns for c in conversations]
    assert min(turns) == 1 and max(turns) == 5
    assert len({c.conversation_id for c in conversations}) == 10


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "invalid JSON at line 1"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "missing or empty 'conversation_id'"),
        ({"conversation_id": "x", "messages": []}, "'messages' must be a non-empty list"),
        ({"conversation_id": "x", "messages": [{"role": "robot", "content": "hi"}]}, "message 0: unknown role 'robot'"),
        (
            {"conversation_id": "x", "messages": [{"role": "assistant", "content": "hi"}]},
            "message 0: assistant message",
        ),
        (
            {"conversation_id": "x", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "message 1: two user messages in a row",
        ),
        ({"conversation_id": "x", "messages": [{"role": "user", "content": "  "}]}, "message 0: empty or missing"),
        (
            {
                "conversation_id": "x",
                "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
            },
            "message 1: a system message may only come first",
        ),
    ],
)
def test_invalid_file_is_named_with_the_message_index(tmp_path: Path, content: object, expected: str) -> None:
    problems = problems_for(tmp_path, content)
    assert any(p.startswith(f"{tmp_path / 'bad.json'}: ") and expected in p for p in problems), problems


def test_non_utf8_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "latin.json").write_bytes('{"conversation_id": "é"}'.encode("latin-1"))
    with pytest.raises(ConversationError, match=r"latin\.json: not UTF-8"):
        load_conversations(tmp_path)


def test_every_problem_of_every_file_is_listed(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"conversation_id": "a", "messages": [{"role": "assistant", "content": ""}]})
    write(tmp_path, "b.json", "[]")
    write(tmp_path, "good.json", SCRIPT)
    with pytest.raises(ConversationError) as caught:
        load_conversations(tmp_path)
    text = str(caught.value)
    assert "a.json: message 0: assistant message" in text
    assert "a.json: message 0: empty or missing 'content'" in text
    assert "b.json: top level must be an object" in text
    assert "good.json" not in text


def test_missing_or_empty_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConversationError, match=r"no \*\.json conversation files found"):
        load_conversations(tmp_path)
    with pytest.raises(ConversationError, match="conversations directory not found"):
        load_conversations(tmp_path / "nowhere")


def load_script(tmp_path: Path) -> object:
    write(tmp_path, "c1.json", SCRIPT)
    return load_conversations(tmp_path)[0]


def test_each_turn_sends_the_scripted_history(tmp_path: Path) -> None:
    conversation = load_script(tmp_path)
    turns = list(plan_turns(conversation, random.Random(1), cut_probability=0))  # type: ignore[arg-type]
    contents = [[m["content"] for m in turn.request] for turn in turns]
    assert contents == [
        ["Be brief.", "u1"],
        ["Be brief.", "u1", "a1", "u2"],
        ["Be brief.", "u1", "a1", "u2", "a2", "u3"],
    ]
    assert [t.next_user_message for t in turns] == ["u2", "u3", None]
    # Ending with a user message: it is sent, and there is no scripted reply to append.
    assert turns[-1].scripted_reply is None


def test_max_messages_caps_user_turns(tmp_path: Path) -> None:
    conversation = load_script(tmp_path)
    turns = list(plan_turns(conversation, random.Random(1), cut_probability=0, max_messages=2))  # type: ignore[arg-type]
    assert len(turns) == 2 and turns[-1].next_user_message is None


def test_cut_keeps_the_first_one_to_three_user_messages(tmp_path: Path) -> None:
    write(
        tmp_path,
        "long.json",
        {
            "conversation_id": "l",
            "messages": [
                m
                for i in range(6)
                for m in ({"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"})
            ],
        },
    )
    conversation = load_conversations(tmp_path)[0]
    rng = random.Random(7)
    lengths = [len(list(plan_turns(conversation, rng, cut_probability=1.0))) for _ in range(300)]
    assert set(lengths) == {1, 2, 3}
    uncut = [len(list(plan_turns(conversation, rng, cut_probability=0.2))) for _ in range(2000)]
    share_cut = sum(1 for n in uncut if n < 6) / len(uncut)
    assert 0.16 < share_cut < 0.24


def test_think_time_is_length_over_typing_speed_bounded_and_scaled() -> None:
    assert think_time("x" * 100, typing_speed=20, scale=1) == pytest.approx(5.0)
    assert think_time("x" * 100, typing_speed=20, scale=0.5) == pytest.approx(2.5)
    assert think_time("hi", typing_speed=20, scale=1) == THINK_TIME_MIN_S
    assert think_time("x" * 10_000, typing_speed=20, scale=1) == THINK_TIME_MAX_S
    assert think_time("x" * 100, typing_speed=20, scale=0) == 0


def test_model_filter_ignores_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "model_filter.txt", "# embeddings\ntext-embedding-3-small\n\n gpt-4-32k  # costly\n")
    assert read_model_filter(path) == {"text-embedding-3-small", "gpt-4-32k"}
    assert read_model_filter(tmp_path / "absent.txt") == set()
    with pytest.raises(FileNotFoundError, match=r"absent\.txt"):
        read_model_filter(tmp_path / "absent.txt", required=True)
    assert eligible_models(["a", "gpt-4-32k", "b"], {"gpt-4-32k"}) == ["a", "b"]
    with pytest.raises(NoModelsError, match="leaves none"):
        eligible_models(["gpt-4-32k"], {"gpt-4-32k"})
