"""The SDK against a real daemon and real guests (QEMU): run through
``crates/banger/tests/sdk_python.rs``, which gives these tests a banger
world of their own (``BANGER_SDK_E2E=1``, the CLI in ``BANGER_BIN``, the
image in ``BANGER_SDK_IMAGE``); skipped when run on their own."""

import os
import tracemalloc

import pytest

from banger import BangerError, Client, Sandbox

pytestmark = pytest.mark.skipif(
    os.environ.get("BANGER_SDK_E2E") != "1",
    reason="needs a banger world with a bootable image: run crates/banger/tests/sdk_python.rs",
)

IMAGE = os.environ.get("BANGER_SDK_IMAGE") or None
MIB = 1 << 20


def vm_names(client):
    return sorted(vm["name"] for vm in client.call("vm.list"))


@pytest.fixture(scope="module")
def client():
    # The daemon is not running yet: the client starts it as the CLI does.
    c = Client()
    yield c
    c.close()


def test_a_command_in_a_fresh_vm_and_nothing_left_when_the_body_raises(client):
    before = vm_names(client)
    stages = []
    stream = client.events()
    name = None
    with pytest.raises(RuntimeError, match="the body failed"):
        with Sandbox(image=IMAGE, client=client, on_stage=lambda s: stages.append(s["name"])) as sb:
            name = sb.name
            assert sb.name in vm_names(client)
            assert any("boot" in s or "vmm" in s or "restore" in s for s in stages), stages
            result = sb.exec("echo hi; exit 3")
            assert result.stdout == b"hi\n"
            assert result.exit_code == 3
            assert not result.ok
            raise RuntimeError("the body failed")
    assert vm_names(client) == before, "the sandbox was deleted"

    # The event stream saw the sandbox made, running and deleted, in
    # order, and the create's stages as on_stage did.
    seen = []
    for event in stream:
        seen.append(event)
        if event["type"] == "object" and event.get("name") == name and event["action"] == "deleted":
            break
    stream.close()
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    states = [e.get("vm_state") for e in seen if e["type"] == "object" and e.get("name") == name]
    assert states[0] == "creating" and "running" in states and states[-1] is None, states
    streamed = [e["stage"] for e in seen if e["type"] == "op_stage" and e["op_id"] == seen[0]["op_id"]]
    assert seen[0]["type"] == "op_started" and streamed == stages, (seen[0], streamed, stages)

    # Resumed from before the first: exactly the same events again.
    with client.events(since=seqs[0] - 1, epoch=stream.epoch) as again:
        assert again.complete and again.replayed >= len(seen)
        replay = [next(again) for _ in seen]
    assert replay == seen


def test_files_exec_ports_workspace_snapshot_fork_and_a_large_stream(client, tmp_path):
    before = vm_names(client)
    with Sandbox(image=IMAGE, client=client) as sb:
        sb.files.write("/root/note.txt", "written by the sdk\n")
        cat = sb.exec(["cat", "/root/note.txt"])
        assert (cat.exit_code, cat.stdout) == (0, b"written by the sdk\n")
        assert sb.files.read("/root/note.txt") == b"written by the sdk\n"
        with pytest.raises(BangerError) as too_big:
            sb.files.read("/root/note.txt", max_bytes=4)
        assert too_big.value.code == "too_large"
        assert sb.exec("cat", stdin=b"through stdin").stdout == b"through stdin"
        assert sb.exec("pwd", cwd="/tmp").text == "/tmp\n"
        assert sb.exec("echo $GREETING", env={"GREETING": "hello"}).text == "hello\n"

        ports = sb.ports()
        assert any(p["port"] == 22 for p in ports), ports

        # 10 MiB streamed to a callback: counted, never held at once.
        seen = 0

        def count(chunk):
            nonlocal seen
            seen += len(chunk)

        tracemalloc.start()
        big = sb.exec(f"head -c {10 * MIB} /dev/zero", on_stdout=count)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert big.exit_code == 0
        assert seen == 10 * MIB
        assert big.stdout == b"" and big.stdout_dropped == 0
        assert peak < 6 * MIB, f"peak {peak} bytes while streaming 10 MiB"

        # A workspace: a project in, the guest's changes back onto it.
        project = tmp_path / "proj"
        project.mkdir()
        (project / "a.txt").write_text("a\n")
        pushed = sb.workspace.push(project)
        assert (pushed["guest_path"], pushed["files"]) == ("/root/work", 1), pushed
        assert sb.exec("echo b >> a.txt && echo new > b.txt", cwd="/root/work").ok
        diff = sb.workspace.diff()
        assert [(c["path"], c["change"]) for c in diff["changes"]] == [
            ("a.txt", "modified"),
            ("b.txt", "added"),
        ], diff
        assert b"+b\n" in sb.workspace.patch()
        sb.workspace.apply()
        assert (project / "a.txt").read_text() == "a\nb\n"
        assert (project / "b.txt").read_text() == "new\n"

        snap = sb.snapshot()
        assert snap["vm"] == sb.name
        client.call("snapshot.delete", {"name": snap["name"]})

        child = sb.fork()
        try:
            assert child.name in vm_names(client)
            assert child.files.read("/root/note.txt") == b"written by the sdk\n"
            assert child.exec("hostname").exit_code == 0
        finally:
            child.delete()
        assert child.name not in vm_names(client)
    assert vm_names(client) == before


def test_a_bad_argument_is_an_error_with_a_code_and_an_op_id(client):
    before = vm_names(client)
    with pytest.raises(BangerError) as caught:
        Sandbox.create(image="no-such-image", client=client)
    error = caught.value
    assert error.code == "not_found", error
    assert "no-such-image" in error.message
    assert error.op_id and error.op_id.startswith("op-"), error
    assert vm_names(client) == before, "nothing was left"

    with pytest.raises(BangerError) as caught:
        Sandbox.attach("no-such-vm", client=client)
    assert caught.value.code == "not_found"
    assert caught.value.op_id.startswith("op-")
