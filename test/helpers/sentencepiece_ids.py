# The ids Google's sentencepiece (Debian's python3-sentencepiece) gives each text with a spiece.model, </s>
# appended as T5's tokenizer does: an implementation of T5's tokenization independent of the one graft
# uses. Reads {"model": path, "texts": [...]} on stdin, prints [[id, ...], ...].
import json
import sys

import sentencepiece

request = json.load(sys.stdin)
processor = sentencepiece.SentencePieceProcessor(model_file=request["model"])
print(json.dumps([processor.encode(text, add_eos=True) for text in request["texts"]]))
