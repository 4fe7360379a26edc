# Protocol-core checks that run ON the MicroPython Unix port (tests/test_protocol.py runs this
# file once under -X heapsize=64k and turns each t_* function into a pytest result).
import json
import sys

from iotjobs import protocol as p

T = "dev-1"
PRE = "$aws/things/dev-1/jobs/"


def raises(exc, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError("%s did not raise %s" % (fn, exc.__name__))


def t_thing_names_follow_the_aws_pattern_and_length():
    assert p.valid_thing("a")
    assert p.valid_thing("Dev_1-x:y")
    assert p.valid_thing("x" * 128)
    assert not p.valid_thing("x" * 129)
    assert not p.valid_thing("")
    assert not p.valid_thing("a/b")
    assert not p.valid_thing("a+b")
    assert not p.valid_thing("a#")
    assert not p.valid_thing("caf\u00e9")
    assert not p.valid_thing(None)


def t_job_ids_follow_the_aws_pattern_and_length():
    assert p.valid_job_id("job_1-A")
    assert p.valid_job_id("j" * 64)
    assert not p.valid_job_id("j" * 65)
    assert not p.valid_job_id("a:b")
    assert not p.valid_job_id("$next")
    assert not p.valid_job_id(7)


def t_topics_are_built_for_the_thing_and_job():
    assert p.topic_start_next(T) == PRE + "start-next"
    assert p.topic_describe(T, "j1") == PRE + "j1/get"
    assert p.topic_describe(T, "$next") == PRE + "$next/get"
    assert p.topic_update(T, "j1") == PRE + "j1/update"
    assert p.subscriptions(T) == (
        PRE + "notify-next",
        PRE + "start-next/+",
        PRE + "+/get/+",
        PRE + "+/update/+",
    )


def t_topic_builders_refuse_bad_names_before_publishing():
    raises(ValueError, p.topic_update, T, "a/b")
    raises(ValueError, p.topic_update, T, "#")
    raises(ValueError, p.topic_start_next, "a/+")
    raises(ValueError, p.subscriptions, "")


def t_incoming_topics_are_classified():
    assert p.parse_topic(T, PRE + "notify-next") == (p.NOTIFY_NEXT, None, None)
    assert p.parse_topic(T, PRE + "notify") == (p.NOTIFY, None, None)
    assert p.parse_topic(T, PRE + "start-next/accepted") == (p.START_NEXT, None, True)
    assert p.parse_topic(T, PRE + "start-next/rejected") == (p.START_NEXT, None, False)
    assert p.parse_topic(T, PRE + "get/accepted") == (p.GET_PENDING, None, True)
    assert p.parse_topic(T, PRE + "j1/get/rejected") == (p.DESCRIBE, "j1", False)
    assert p.parse_topic(T, PRE + "j1/update/accepted") == (p.UPDATE, "j1", True)
    assert p.parse_topic(T, PRE + "$next/get/accepted") == (p.DESCRIBE, "$next", True)


def t_foreign_and_malformed_topics_are_ignored():
    assert p.parse_topic(T, "$aws/things/dev-2/jobs/notify-next") is None
    assert p.parse_topic(T, "$aws/things/dev-1x/jobs/notify-next") is None
    assert p.parse_topic(T, PRE + "start-next") is None  # our own request, not a reply
    assert p.parse_topic(T, PRE + "j1/update") is None
    assert p.parse_topic(T, PRE + "j1/update/maybe") is None
    assert p.parse_topic(T, PRE + "j1/x/accepted") is None
    assert p.parse_topic(T, PRE + "a/b/c/accepted") is None


def t_update_request_carries_status_details_and_expected_version():
    req = json.loads(p.update("tok1", p.IN_PROGRESS, {"step": "download"}, 3, step_timeout=5))
    assert req == {
        "clientToken": "tok1",
        "status": "IN_PROGRESS",
        "statusDetails": {"step": "download"},
        "expectedVersion": 3,
        "includeJobExecutionState": True,
        "stepTimeoutInMinutes": 5,
    }
    req = json.loads(p.update("t", p.SUCCEEDED))
    assert req == {"clientToken": "t", "status": "SUCCEEDED", "includeJobExecutionState": True}


def t_update_refuses_statuses_a_device_cannot_set():
    for s in ("CANCELED", "QUEUED", "TIMED_OUT", "REMOVED", "done"):
        raises(ValueError, p.update, "t", s)


def t_request_limits_are_checked_before_sending():
    raises(ValueError, p.update, "", p.FAILED)
    raises(ValueError, p.update, "t" * 65, p.FAILED)
    raises(ValueError, p.start_next, "t", None, 0)
    raises(ValueError, p.start_next, "t", None, 10081)
    assert json.loads(p.start_next("t", None, 10080))["stepTimeoutInMinutes"] == 10080
    assert json.loads(p.start_next("t", None, -1))["stepTimeoutInMinutes"] == -1
    assert json.loads(p.start_next("t")) == {"clientToken": "t"}
    assert json.loads(p.start_next("t", {"a": "b"})) == {
        "clientToken": "t",
        "statusDetails": {"a": "b"},
    }
    req = json.loads(p.describe("t", False))
    assert req == {"clientToken": "t", "includeJobDocument": False}


def t_clean_details_makes_any_reason_reportable():
    # statusDetails limits: keys [a-zA-Z0-9:_-]{1,128}, values 1-1024 characters without
    # control characters.
    ok = {"k" * 128: "v" * 1024}
    assert p.clean_details(ok) == ok
    d = p.clean_details({"reason": "x" * 5000, "bad key": "v", "n": 5, "nl": "a\nb", "e": ""})
    assert len(d["reason"]) == 1024 and d["reason"].endswith("...")
    assert "bad key" not in d and "k" * 129 not in p.clean_details({"k" * 129: "v"})
    assert d["n"] == "5" and d["nl"] == "a b" and d["e"] == "-"


def t_every_error_code_has_its_reaction():
    assert p.reaction("RequestThrottled") == p.RETRY
    assert p.reaction("InternalError") == p.RETRY
    assert p.reaction("VersionMismatch") == p.REFRESH
    assert p.reaction("InvalidStateTransition") == p.REFRESH
    assert p.reaction("TerminalStateReached") == p.DROP
    assert p.reaction("ResourceNotFound") == p.DROP
    assert p.reaction("InvalidJson") == p.BUG
    assert p.reaction("InvalidRequest") == p.BUG
    assert p.reaction("InvalidTopic") == p.BUG
    assert p.reaction("SomethingNew") == p.BUG


def t_execution_is_parsed_from_a_start_next_reply():
    reply = {
        "clientToken": "t",
        "execution": {
            "jobId": "j1",
            "status": "QUEUED",
            "versionNumber": 1,
            "executionNumber": 7,
            "jobDocument": {"operation": "config", "set": {"log_level": "debug"}},
            "statusDetails": {"step": "x"},
        },
    }
    ex = p.reply_execution(reply)
    assert ex.job_id == "j1" and ex.status == "QUEUED" and ex.version == 1
    assert ex.document["set"] == {"log_level": "debug"}
    assert not ex.terminal()
    assert p.operation(ex.document) == "config"


def t_a_document_that_is_not_an_object_still_names_its_job():
    for doc in ("[1, 2]", "not json", 5, None, '"s"'):
        ex = p.parse_execution({"jobId": "j2", "status": "QUEUED", "jobDocument": doc})
        assert ex.job_id == "j2" and ex.document is None
    assert p.parse_execution({"jobId": "j2", "jobDocument": '{"a": 1}'}).document == {"a": 1}


def t_replies_without_a_usable_execution_give_none():
    assert p.reply_execution({}) is None
    assert p.reply_execution({"execution": {"jobId": "bad/id"}}) is None
    assert p.reply_execution([]) is None
    assert p.parse_execution("x") is None


def t_wrong_types_in_replies_are_tolerated():
    ex = p.parse_execution({"jobId": "j", "status": 3, "versionNumber": "2", "statusDetails": []})
    assert ex.status is None and ex.version is None


def t_reply_state_and_error_are_read():
    assert p.reply_state({"executionState": {"status": "IN_PROGRESS", "versionNumber": 4}}) == (
        "IN_PROGRESS",
        4,
    )
    assert p.reply_state({}) == (None, None)
    assert p.reply_state(None) == (None, None)
    assert p.reply_error({"code": "VersionMismatch", "message": "m"}) == ("VersionMismatch", "m")
    assert p.reply_error({}) == ("Unknown", "")
    assert p.reply_error("x")[0] == "InvalidJson"


def t_operation_supports_device_client_and_freertos_ota_documents():
    assert p.operation({"operation": "reboot"}) == "reboot"
    assert p.operation({"afr_ota": {"files": []}}) == "afr_ota"
    assert p.operation({"operation": ""}) is None
    assert p.operation({"operation": 3}) is None
    assert p.operation({}) is None
    assert p.operation(None) is None


def _main():
    import gc

    names = sorted(k for k in globals() if k.startswith("t_"))
    for name in names:
        try:
            globals()[name]()
            print("PASS", name)
        except Exception as e:
            print("FAIL", name, repr(e))
        gc.collect()
    print("HEAP", gc.mem_alloc() + gc.mem_free(), gc.mem_alloc())


_main()
sys.exit(0)
