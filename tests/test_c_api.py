#!/usr/bin/env python3
"""The C API from Python through ctypes: chats greedily with stories260K and compares the ids
with llama.cpp's golden outputs. Builds nothing.

Usage: test_c_api.py <path of libtinyslm_c> <shared dir>
Exit 0: passed, 1: failed, 77: skipped (the shared test data is absent).
"""
import ctypes as C
import json
import os
import sys


class SessionParams(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("n_ctx", C.c_int32), ("n_threads", C.c_int32),
                ("n_batch", C.c_int32), ("seed", C.c_uint32), ("overflow", C.c_int32), ("keep", C.c_int32)]


PIECE_CALLBACK = C.CFUNCTYPE(C.c_int32, C.c_char_p, C.c_int32, C.c_void_p)


class GenerateOptions(C.Structure):
    _fields_ = [("struct_size", C.c_uint32), ("max_tokens", C.c_int32), ("temperature", C.c_float),
                ("top_k", C.c_int32), ("top_p", C.c_float), ("min_p", C.c_float),
                ("repeat_penalty", C.c_float), ("repeat_last_n", C.c_int32), ("seed", C.c_uint32),
                ("stop", C.POINTER(C.c_char_p)), ("n_stop", C.c_int32), ("stop_at_eog", C.c_int32),
                ("render_special", C.c_int32), ("on_piece", PIECE_CALLBACK), ("user_data", C.c_void_p)]


class Result(C.Structure):
    _fields_ = [("text", C.c_char_p), ("text_length", C.c_int32), ("ids", C.POINTER(C.c_int32)),
                ("n_ids", C.c_int32), ("stop_reason", C.c_int32), ("prompt_tokens", C.c_int32),
                ("prompt_reused", C.c_int32), ("prompt_ms", C.c_double), ("generation_ms", C.c_double)]


class Message(C.Structure):
    _fields_ = [("role", C.c_char_p), ("content", C.c_char_p)]


def bind(lib):
    P = C.c_void_p
    sigs = {
        "tinyslm_last_error": (C.c_char_p, []),
        "tinyslm_model_load": (C.c_int, [C.c_char_p, C.POINTER(P)]),
        "tinyslm_model_free": (None, [P]),
        "tinyslm_model_n_vocab": (C.c_int32, [P]),
        "tinyslm_model_architecture": (C.c_char_p, [P]),
        "tinyslm_model_has_chat_template": (C.c_int32, [P]),
        "tinyslm_session_params_init": (None, [C.POINTER(SessionParams)]),
        "tinyslm_session_create": (C.c_int, [P, C.POINTER(SessionParams), C.POINTER(P)]),
        "tinyslm_session_free": (None, [P]),
        "tinyslm_session_reset": (None, [P]),
        "tinyslm_session_last_error": (C.c_char_p, [P]),
        "tinyslm_generate_options_init": (None, [C.POINTER(GenerateOptions)]),
        "tinyslm_generate": (C.c_int, [P, C.c_char_p, C.POINTER(GenerateOptions), C.POINTER(Result)]),
        "tinyslm_chat_set_system_prompt": (C.c_int, [P, C.c_char_p]),
        "tinyslm_chat_send": (C.c_int, [P, C.c_char_p, C.POINTER(GenerateOptions), C.POINTER(Result)]),
        "tinyslm_apply_chat_template": (C.c_int, [P, C.POINTER(Message), C.c_int32, C.c_int32,
                                                  C.POINTER(C.c_char_p), C.POINTER(C.c_int32)]),
        "tinyslm_tokenize": (C.c_int, [P, C.c_char_p, C.c_int32, C.c_int32, C.POINTER(C.POINTER(C.c_int32)),
                                       C.POINTER(C.c_int32)]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args


failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print("CHECK failed:", what, file=sys.stderr)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 1
    model_path = os.path.join(sys.argv[2], "models", "stories260K.gguf")
    golden_path = os.path.join(sys.argv[2], "golden", "stories260K.json")
    if not os.path.exists(model_path):
        print("SKIPPED: %s not found (the shared test data is absent)" % model_path)
        return 77
    lib = C.CDLL(sys.argv[1])
    bind(lib)
    golden = json.load(open(golden_path, encoding="utf-8"))
    prompts = {p["id"]: p for p in golden["prompts"]}
    n_gen = golden["settings"]["n_gen"]

    model = C.c_void_p()
    if lib.tinyslm_model_load(model_path.encode(), C.byref(model)) != 0:
        print("model_load:", lib.tinyslm_last_error().decode(), file=sys.stderr)
        return 1
    check(lib.tinyslm_model_n_vocab(model) == golden["model"]["n_vocab"], "n_vocab")
    check(lib.tinyslm_model_architecture(model).decode() == golden["model"]["architecture"], "architecture")
    check(lib.tinyslm_model_has_chat_template(model) == (golden["model"]["chat_template"] is not None),
          "has_chat_template")

    sp = SessionParams()
    lib.tinyslm_session_params_init(C.byref(sp))
    sp.n_ctx = golden["settings"]["n_ctx"]
    sp.n_threads = 1
    session = C.c_void_p()
    if lib.tinyslm_session_create(model, C.byref(sp), C.byref(session)) != 0:
        print("session_create:", lib.tinyslm_last_error().decode(), file=sys.stderr)
        return 1

    opt = GenerateOptions()
    lib.tinyslm_generate_options_init(C.byref(opt))
    opt.temperature = 0.0
    opt.max_tokens = n_gen
    streamed = []

    @PIECE_CALLBACK
    def on_piece(piece, length, user):
        streamed.append(C.string_at(piece, length))
        return 1

    opt.on_piece = on_piece
    res = Result()

    # A chat turn: the system prompt and the user's message of chat_system_user.
    p = prompts["chat_system_user"]
    msgs = p["messages"]
    check([m["role"] for m in msgs] == ["system", "user"], "chat_system_user messages")
    check(lib.tinyslm_chat_set_system_prompt(session, msgs[0]["content"].encode()) == 0, "set_system_prompt")
    st = lib.tinyslm_chat_send(session, msgs[1]["content"].encode(), C.byref(opt), C.byref(res))
    check(st == 0, "chat_send: " + lib.tinyslm_session_last_error(session).decode())
    if st == 0:
        ids = res.ids[:res.n_ids]
        check(ids == p["greedy"]["tokens"], "chat ids %s != golden %s" % (ids, p["greedy"]["tokens"]))
        check(b"".join(streamed) == C.string_at(res.text, res.text_length), "streamed text == result text")
        check(C.string_at(res.text, res.text_length).decode() == p["greedy"]["text"], "chat text")

    # Several turns through apply_chat_template + generate (chat_multi_turn has an assistant turn).
    p = prompts["chat_multi_turn"]
    arr = (Message * len(p["messages"]))(*[Message(m["role"].encode(), m["content"].encode())
                                          for m in p["messages"]])
    text, n = C.c_char_p(), C.c_int32()
    check(lib.tinyslm_apply_chat_template(session, arr, len(arr), 1, C.byref(text), C.byref(n)) == 0,
          "apply_chat_template")
    rendered = C.string_at(text, n.value).decode()
    check(rendered == p["text"], "rendered chat_multi_turn prompt")
    ids_p, n_ids = C.POINTER(C.c_int32)(), C.c_int32()
    check(lib.tinyslm_tokenize(session, rendered.encode(), 1, 1, C.byref(ids_p), C.byref(n_ids)) == 0, "tokenize")
    check(ids_p[:n_ids.value] == p["eval_tokens"], "chat_multi_turn tokens")
    lib.tinyslm_session_reset(session)
    streamed.clear()
    check(lib.tinyslm_generate(session, rendered.encode(), C.byref(opt), C.byref(res)) == 0, "generate")
    check(res.ids[:res.n_ids] == p["greedy"]["tokens"], "chat_multi_turn ids")

    # A bad option value comes back as an error with a message, not a crash.
    opt.top_p = -1.0
    st = lib.tinyslm_generate(session, b"x", C.byref(opt), C.byref(res))
    check(st != 0 and lib.tinyslm_session_last_error(session), "bad top_p rejected")

    lib.tinyslm_session_free(session)
    lib.tinyslm_model_free(model)
    if failures:
        print("%d check(s) failed" % failures, file=sys.stderr)
        return 1
    print("test_c_api.py: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
