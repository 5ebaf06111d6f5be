"""
Generate a tiny random-weight llama-architecture GGUF chat model.

The model-routing tests need a *real* OpenAI-compatible chat server
(llama-cpp-python), and that needs a model file.  None small enough is
available offline, so we write one: 2 layers, 64-dim, an SPM-style vocabulary
of a few hundred tokens (control tokens, 256 byte-fallback tokens, English word
pieces) and an embedded chat template.  Weights are random with a fixed seed,
so the file's bytes are deterministic, and with temperature 0 so is the
model's output.  The rows of ``output.weight`` for control and byte tokens are
zero, so the model only ever emits printable word pieces.

Needs PyPI ``gguf`` and numpy, which live in the model-server virtualenv
(``tests/support/install_llama.sh``), not in the project's; run it there as::

    $AICN_MODELS_VENV/bin/python -m tests.support.tinygguf OUT.gguf

or call :func:`tests.support.llama.ensure_tiny_model`, which does that.
"""

from __future__ import annotations

import os
import sys

SEED = 20240611
N_CTX = 512
N_EMBD = 64
N_LAYER = 2
N_FF = 128
N_HEAD = 4
#: Token ids of the control tokens, as llama.cpp's SPM vocab expects them.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

#: A tiny ChatML-like template.  llama-cpp-python uses an embedded
#: ``tokenizer.chat_template`` (through Jinja2) when no ``--chat_format`` is
#: given and it does not recognise the template as a known one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = """
the of and to a in is it you that he was for on are with as his they be at
one have this from or had by hot word but what some we can out other were all
there when up use your how said an each she which do their time if will way
about many then them write would like so these her long make thing see him
two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part
take get place made live where after back little only round man year came
show every good me give our under name very through just form sentence great
think say help low line differ turn cause much mean before move right boy old
too same tell does set three want air well also play small end put home read
hand port large spell add even land here must big high such follow act why
ask men change went light kind off need house picture try us again animal
point mother world near build self earth father head stand own page should
country found answer school grow study still learn plant cover food sun four
between state keep eye never last let thought city tree cross farm hard start
might story saw far sea draw left late run while press close night real life
few north open seem together next white children begin got walk example ease
paper group always music those both mark often letter until mile river car
feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough
plain girl usual young ready above ever red list though feel talk bird soon
body dog family direct pose leave song measure door product black short
numeral class wind question happen complete ship area half rock order fire
south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest
reach fast verb sing listen six table travel less morning ten simple several
vowel toward war lay against pattern slow center love person money serve
appear road map rain rule govern pull cold notice voice unit power town fine
certain fly fall lead cry dark machine note wait plan figure star box noun
field rest correct able pound done beauty drive stood contain front teach week
final gave green oh quick develop ocean warm free minute strong special mind
behind clear tail produce fact street inch multiply nothing course stay wheel
full force blue object decide surface deep moon island foot system busy test
record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate miss brought heat snow tire bring yes distant fill
east paint language among image model chat hello
""".split()


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and token types of the SPM-style vocabulary."""
    import gguf

    tt = gguf.TokenType
    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    scores: list[float] = [0.0, 0.0, 0.0]
    types: list[int] = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL]
    for b in range(256):
        tokens.append(b"<0x%02X>" % b)
        scores.append(0.0)
        types.append(tt.BYTE)
    # SPM marks a word start with U+2581.  Single characters with and without
    # the marker make any ASCII text tokenizable without byte fallback.
    pieces: list[str] = []
    seen: set[str] = set()
    for w in _WORDS:
        for p in ("\u2581" + w,):
            if p not in seen:
                seen.add(p)
                pieces.append(p)
    for c in "abcdefghijklmnopqrstuvwxyz.,!?'|<>":
        for p in (c, "\u2581" + c):
            if p not in seen:
                seen.add(p)
                pieces.append(p)
    for i, p in enumerate(pieces):
        tokens.append(p.encode("utf-8"))
        scores.append(-float(i))  # descending: earlier pieces are preferred
        types.append(tt.NORMAL)
    return tokens, scores, types


def write_tiny_gguf(path: str | os.PathLike[str], seed: int = SEED) -> str:
    """
    Write the tiny model to *path* (atomically) and return the path.

    The bytes depend only on *seed* and the ``gguf`` package's format version.
    """
    import gguf
    import numpy as np

    path = os.fspath(path)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.02) -> "np.ndarray":
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("aicn-tiny-test")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # Larger embeddings/output than the 0.02 default so that logits are not
    # nearly flat, which makes greedy output vary with the prompt.
    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, scale=1.0))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = rand(n_vocab, N_EMBD, scale=1.0)
    # Zero rows give control and byte tokens a logit of 0, while word pieces'
    # logits spread widely around 0 (unit-scale weights, 64 dims), so greedy
    # decoding picks a word piece and sampled output almost always does.
    ctl = [i for i, t in enumerate(types) if t != gguf.TokenType.NORMAL]
    out[ctl, :] = 0.0
    w.add_tensor("output.weight", out)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(N_EMBD, N_EMBD, scale=0.1))
        w.add_tensor(p + "attn_k.weight", rand(N_EMBD, N_EMBD, scale=0.1))
        w.add_tensor(p + "attn_v.weight", rand(N_EMBD, N_EMBD, scale=0.1))
        w.add_tensor(p + "attn_output.weight", rand(N_EMBD, N_EMBD, scale=0.1))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(N_FF, N_EMBD, scale=0.1))
        w.add_tensor(p + "ffn_up.weight", rand(N_FF, N_EMBD, scale=0.1))
        w.add_tensor(p + "ffn_down.weight", rand(N_EMBD, N_FF, scale=0.1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT.gguf", file=sys.stderr)
        return 2
    write_tiny_gguf(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
