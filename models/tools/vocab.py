"""Vocabulary, question wordings and their split, built from the Rust world's listing.

The world (identities, strangers, attributes, facts) comes from `lethectl world list --json`,
so the model tooling and the Rust code can never disagree about who exists. Everything the
Rust side needs to talk to the model (vocabulary, special ids, templates, held-out wordings)
goes into the package.

Question wordings come from a small grammar (subjects x forms). Every wording of every task
is assigned to exactly one of three disjoint sets, fixed by a seeded shuffle:
  TRAIN   pretraining and the forget's facets (manifest `prompts`)
  VERIFY  the agent's verification after a forget (package `probes/paraphrases.json`, "verify")
  EVAL    benchmarks and tests only ("eval"); nothing is tuned on it
Pretraining and the facet builder read TRAIN only. Every word of a held-out wording also
occurs in some TRAIN wording (checked below), so a held-out wording is new as a sentence,
never because of an untrained word.
"""
import json
import random
import subprocess

SPECIAL = ["<pad>", "<bos>", "<sep>", "<eos>"]
PAD, BOS, SEP, EOS = 0, 1, 2, 3

# The templates of the first package, kept in TRAIN (and first in their lists) so the
# established probes and tests keep their wordings.
CANONICAL = {
    "who": ["who is this ?", "who is in the picture ?", "what is the name of this person ?",
            "tell me who this is", "name the person in the image", "who do you see ?"],
    "is_this": ["is this {name} ?", "is {name} in the picture ?"],
    "describe": ["describe the person", "what does this person look like ?"],
    "fact": ["who is {name} ?"],
    "looks": ["what does {name} look like ?"],
}

SUBJECTS = ["this", "this person", "the person", "the person in the picture", "the person in the image",
            "the person in this picture", "the person in this image", "the person you see",
            "the person shown", "the person here"]
WHO_FORMS = ["who is {s} ?", "tell me who {s} is", "what is the name of {s} ?", "tell me the name of {s}",
             "name {s}", "do you know who {s} is ?", "can you tell me who {s} is ?", "can you name {s} ?"]
WHO_PLAIN = ["who is in the picture ?", "who is in the image ?", "who is in this picture ?",
             "who is in this image ?", "who do you see ?", "who do you see in the picture ?",
             "who do you see in the image ?", "who is shown ?", "who is shown in the picture ?",
             "who is here ?", "tell me who is in the picture", "tell me who is in the image",
             "tell me who you see", "can you tell me who is in the picture ?"]
IS_FORMS = ["is {s} {name} ?", "is the name of {s} {name} ?", "is {s} called {name} ?"]
IS_PLAIN = ["is {name} in the picture ?", "is {name} in the image ?", "is {name} in this picture ?",
            "is {name} in this image ?", "is {name} here ?", "is {name} shown ?",
            "is {name} shown in the picture ?", "do you see {name} ?", "do you see {name} in the picture ?",
            "do you see {name} in the image ?", "can you see {name} ?", "can you see {name} in the picture ?",
            "is that {name} ?"]
DESCRIBE_FORMS = ["describe {s}", "what does {s} look like ?", "how does {s} look ?",
                  "tell me what {s} looks like"]
DESCRIBE_PLAIN = ["describe the person", "what does this person look like ?"]
FACT = ["who is {name} ?", "tell me who {name} is", "tell me about {name}", "what do you know about {name} ?",
        "do you know who {name} is ?", "can you tell me who {name} is ?", "can you tell me about {name} ?"]
LOOKS = ["what does {name} look like ?", "describe {name}", "how does {name} look ?",
         "tell me what {name} looks like", "can you describe {name} ?"]

ANSWERS = {
    "who_answer": "this is {name}",
    "yes": "yes",
    "no": "no",
    # What the model says about anyone it was not taught to name (strangers), and so the
    # target of a forget: after it, the concept is one more stranger.
    "refusal": "i do not know who this is",
    # SIU's T2 facet (new visual description); kept for the paper's method in benchmarks.
    "denial": "no the picture shows {description}",
}
EXTRA_WORDS = "yes no this is a from who the picture shows i do not know face hair skin eyes accessory".split()


def _words(ws):
    return {w for x in ws for w in x.split() if not w.startswith("{")}


def _expand(forms, plain, subjects=SUBJECTS):
    out = list(plain)
    for f in forms:
        for s in subjects:
            # "this" alone reads well only as "who is this", "is this ...": not as a noun
            # phrase ("the name of this", "describe this", "what does this look like").
            if s == "this" and any(k in f for k in ("of {s}", "name {s}", "describe {s}", "{s} look")):
                continue
            w = f.replace("{s}", s)
            out.append(w)
    seen, uniq = set(), []
    for w in out:
        if w not in seen:
            seen.add(w)
            uniq.append(w)
    return uniq


def _split(task, wordings, verify_share, eval_share, seed):
    """Canonical wordings stay in TRAIN; of the rest, a seeded share goes to VERIFY and EVAL."""
    canon = CANONICAL.get(task, [])
    rest = [w for w in wordings if w not in canon]
    rng = random.Random(f"{seed}-{task}")
    rng.shuffle(rest)
    nv = round(verify_share * len(rest))
    ne = round(eval_share * len(rest))
    verify, evals, train = rest[:nv], rest[nv:nv + ne], rest[nv + ne:]
    return canon + train, verify, evals


def wordings(seed=2026):
    """{task: (train, verify, eval)} for who, is_this, describe, fact, looks."""
    all_w = {
        "who": _expand(WHO_FORMS, WHO_PLAIN),
        "is_this": _expand(IS_FORMS, IS_PLAIN),
        "describe": _expand(DESCRIBE_FORMS, DESCRIBE_PLAIN),
        "fact": FACT,
        "looks": LOOKS,
    }
    shares = {"who": (0.2, 0.2), "is_this": (0.2, 0.2), "describe": (0.2, 0.2), "fact": (0.25, 0.25),
              "looks": (0.34, 0.34)}
    out = {task: _split(task, ws, *shares[task], seed) for task, ws in all_w.items()}
    # A held-out wording whose words no TRAIN wording uses would be new because of an
    # untrained word, not as a sentence: move such wordings back to TRAIN (deterministic).
    while True:
        trained = _words(w for t in out.values() for w in t[0]) | _words(ANSWERS.values())
        moved = False
        for task, (tr, ve, ev) in out.items():
            for held in (ve, ev):
                for w in list(held):
                    if _words([w]) - trained:
                        held.remove(w)
                        tr.append(w)
                        moved = True
                        break
                if moved:
                    break
            if moved:
                break
        if not moved:
            return out


WORDINGS = wordings()
PROMPTS = {task: sets[0] for task, sets in WORDINGS.items()}
PROMPTS.update(ANSWERS)
HELD_OUT = {"verify": {t: s[1] for t, s in WORDINGS.items()}, "eval": {t: s[2] for t, s in WORDINGS.items()}}


def check_split():
    for task, (tr, ve, ev) in WORDINGS.items():
        assert not (set(tr) & set(ve)) and not (set(tr) & set(ev)) and not (set(ve) & set(ev)), task
        assert ve and ev, f"{task}: empty held-out set"
    train_words = _words(w for t in WORDINGS.values() for w in t[0]) | _words(
        v for k, v in ANSWERS.items())
    for which in HELD_OUT.values():
        for task, ws in which.items():
            missing = _words(ws) - train_words
            assert not missing, f"held-out {task} wordings use untrained words {missing}"


check_split()


def load_world(lethectl):
    out = subprocess.run([lethectl, "world", "list", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def build_vocab(world):
    words = set(EXTRA_WORDS)
    for group in list(PROMPTS.values()) + [s for h in HELD_OUT.values() for s in h.values()]:
        for t in group if isinstance(group, list) else [group]:
            words.update(w for w in t.split() if not w.startswith("{"))
    for ident in world["identities"]:
        words.update(ident["name"].split())
        words.update(ident["description"].split())
        words.update(ident["fact"].split())
    for s in world["strangers"]:
        words.update(s["description"].split())
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


if __name__ == "__main__":
    for task, (tr, ve, ev) in WORDINGS.items():
        print(f"{task}: train {len(tr)}, verify {len(ve)}, eval {len(ev)}")
        print("  verify:", ve)
        print("  eval:  ", ev)
