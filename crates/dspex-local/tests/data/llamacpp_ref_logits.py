import sys, json
import numpy as np
from llama_cpp import Llama
path, ids_json, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = json.loads(ids_json)
llm = Llama(model_path=path, n_ctx=2048, n_threads=2, logits_all=False, verbose=False, n_batch=512)
llm.reset()
llm.eval(ids)
out = []
top = None
for s in range(steps):
    logits = np.array(llm._scores[-1], dtype=np.float32) if hasattr(llm, "_scores") else None
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
    if s == 0:
        o = np.argsort(-logits)[:10]
        top = [[int(i), round(float(logits[i]), 4)] for i in o]
    t = int(np.argmax(logits))
    out.append(t)
    llm.eval([t])
print(json.dumps({"greedy_ids": out, "text": llm.detokenize(out).decode("utf-8", "replace"), "top10": top}))
