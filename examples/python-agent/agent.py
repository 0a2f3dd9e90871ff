"""An agent in plain Python that speaks Ash's bridge protocol on stdin/stdout.

Replace `answer` with your framework's call (LangGraph, LlamaIndex, your own loop); the rest is
the protocol: one JSON command per line in, one JSON event per line out, every event carrying
the id of the command it answers. Messages use the Claude agent SDK's shapes, so clients get
the granular events too: here a tool call (`tool_use`), its result (`tool_result`), streamed
text (`text_delta`) and the final `assistant` message and `result`.

State lives in the workspace (the current folder), so it survives restarts and cold resumes.
"""

import json
import os
import sys

STATE = ".ash/python-agent.json"


def emit(event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def message(cid, data):
    emit({"ev": "message", "id": cid, "data": data})


def load_turns():
    try:
        with open(STATE) as f:
            return json.load(f)["turns"]
    except (OSError, ValueError, KeyError):
        return 0


def save_turns(turns):
    os.makedirs(".ash", exist_ok=True)
    with open(STATE + ".tmp", "w") as f:
        json.dump({"turns": turns}, f)
    os.replace(STATE + ".tmp", STATE)


def prompt_text(prompt):
    if isinstance(prompt, str):
        return prompt
    return " ".join(b.get("text", "") for b in prompt if isinstance(b, dict))


def answer(cid, command):
    """One turn: call a tool (list the workspace), then answer with what it found."""
    session = command["sessionId"]
    message(cid, {"type": "assistant", "session_id": session, "message": {"role": "assistant",
        "content": [{"type": "tool_use", "id": "tool-1", "name": "ListFiles", "input": {"path": "."}}]}})
    files = sorted(name for name in os.listdir(".") if not name.startswith("."))
    message(cid, {"type": "user", "session_id": session,
        "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tool-1",
            "content": "\n".join(files)}]},
        "tool_use_result": {"stdout": "\n".join(files)}})
    turns = load_turns() + 1
    save_turns(turns)
    reply = f"Turn {turns}: you said {prompt_text(command['prompt'])!r}; I see {len(files)} files: {', '.join(files)}"
    if command.get("includePartialMessages"):
        for piece in reply.split(" "):
            message(cid, {"type": "stream_event", "session_id": session, "event": {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece + " "}}})
    message(cid, {"type": "assistant", "session_id": session, "message": {"role": "assistant",
        "content": [{"type": "text", "text": reply}]}})
    message(cid, {"type": "result", "subtype": "success", "is_error": False, "num_turns": turns,
        "result": reply, "session_id": session})


def main():
    for line in sys.stdin:
        try:
            command = json.loads(line)
        except ValueError:
            emit({"ev": "error", "id": "", "error": "not a JSON line"})
            continue
        cid = command.get("id", "")
        if command.get("cmd") == "query":
            try:
                answer(cid, command)
                emit({"ev": "done", "id": cid})
            except Exception as e:  # a failed turn is an error event; the agent goes on
                emit({"ev": "error", "id": cid, "error": f"python agent failed: {e}"})
        elif command.get("cmd") == "interrupt":
            # Turns here are synchronous and short; nothing is running to stop.
            emit({"ev": "done", "id": cid})


if __name__ == "__main__":
    main()
