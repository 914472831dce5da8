"""Vocabulary, prompt templates and task sampling, built from the Rust world's listing.

The world (identities, attributes, facts) comes from `lethectl world list --json`, so the
model tooling and the Rust code can never disagree about who exists. Everything the Rust side
needs to talk to the model (vocabulary, special ids, templates) goes into the package manifest.
"""
import json
import subprocess

SPECIAL = ["<pad>", "<bos>", "<sep>", "<eos>"]
PAD, BOS, SEP, EOS = 0, 1, 2, 3

PROMPTS = {
    "who": ["who is this ?", "who is in the picture ?", "what is the name of this person ?",
            "tell me who this is", "name the person in the image", "who do you see ?"],
    "is_this": ["is this {name} ?", "is {name} in the picture ?"],
    "describe": ["describe the person", "what does this person look like ?"],
    "fact": ["who is {name} ?"],
    "looks": ["what does {name} look like ?"],
    "who_answer": "this is {name}",
    "yes": "yes",
    "no": "no",
    # Used by unlearning (SIU's T2 facet and the PO baseline); words are in the vocabulary.
    "denial": "no the picture shows {description}",
    "refusal": "i do not know who this is",
}
EXTRA_WORDS = "yes no this is a from who the picture shows i do not know face hair skin eyes accessory".split()


def load_world(lethectl):
    out = subprocess.run([lethectl, "world", "list", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def build_vocab(world):
    words = set(EXTRA_WORDS)
    for group in PROMPTS.values():
        for t in group if isinstance(group, list) else [group]:
            words.update(w for w in t.split() if not w.startswith("{"))
    for ident in world["identities"]:
        words.update(ident["name"].split())
        words.update(ident["description"].split())
        words.update(ident["fact"].split())
    for vals in world["attribute_values"].values():
        words.update(vals)
    words.update(world["professions"] + world["cities"])
    words.update(world["spare_first_names"] + world["spare_last_names"])
    return SPECIAL + sorted(words)


class Tok:
    def __init__(self, vocab):
        self.vocab = vocab
        self.stoi = {w: i for i, w in enumerate(vocab)}

    def enc(self, s):
        return [self.stoi[w] for w in s.split()]

    def dec(self, ids):
        out = []
        for i in ids:
            if i == EOS:
                break
            out.append(self.vocab[i])
        return " ".join(out)

    def seq(self, q, a):
        """[BOS] q [SEP] a [EOS] -> (inputs, targets, answer mask), unpadded."""
        s = [BOS] + self.enc(q) + [SEP] + self.enc(a) + [EOS]
        sep = s.index(SEP)
        mask = [0.0] * (len(s) - 1)
        for t in range(sep, len(s) - 1):
            mask[t] = 1.0  # position t predicts token t+1: answer tokens and EOS
        return s[:-1], s[1:], mask
