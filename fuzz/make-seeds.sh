#!/usr/bin/env bash
# Regenerates the committed seed corpus (fuzz/seeds/<target>/) from fixtures/ plus a few
# hand-written edge cases. Regression inputs (seeds/<target>/regression-*) are kept.
set -euo pipefail
cd "$(dirname "$0")"
fixtures=../fixtures
for t in sse_framer sse_transform envelope upstream_response json_check envelope_members; do
  mkdir -p "seeds/$t"
  find "seeds/$t" -type f ! -name 'regression-*' -delete
done

# envelope: every JSON/HTML/text body, as it is.
for f in "$fixtures"/errors/* "$fixtures"/bare/*.json "$fixtures"/envelope/*.json; do
  cp "$f" "seeds/envelope/$(basename "$(dirname "$f")")-$(basename "$f")"
done

# json_check: the JSON bodies, and edge cases of numbers, escapes, UTF-8 and nesting.
for f in "$fixtures"/bare/*.json "$fixtures"/envelope/*.json "$fixtures"/errors/*.json; do
  cp "$f" "seeds/json_check/$(basename "$(dirname "$f")")-$(basename "$f")"
done
json_cases=(
  ' [-0.5e+7, 0, 1E-2, true, false, null] '
  '{"a":"\\u00e9\\ud800\\/\\n","\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf":{}}'
  # 66 levels of arrays around an object: past the validator's first word of nesting bits.
  "$(printf '[%.0s' $(seq 66)){\"k\":[]}$(printf ']%.0s' $(seq 66))"
  '"\xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80 \x7f"'
)
for k in "${!json_cases[@]}"; do
  printf '%b' "${json_cases[$k]}" > "seeds/json_check/edge-$k"
done

# envelope_members: the JSON bodies, and objects whose names are spelt with escapes, named
# twice, or cannot be decoded.
for f in "$fixtures"/envelope/*.json "$fixtures"/errors/*.json; do
  cp "$f" "seeds/envelope_members/$(basename "$(dirname "$f")")-$(basename "$f")"
done
member_cases=(
  ' {"success" : true ,"code":\t"200"\n,"data": {"a": [1, 2.0]}} '
  '{"\\u0073uccess":true,"d\\u0061ta":[],"\\ud83d\\ude00":1}'
  '{"\\ud800":1,"success":true}'
  '{"code":1,"data":1,"\\u0064ata":2,"object":null}'
  '{"success":false,"code":"500","message":"m","data":null,"error":{"\\ud800":"\xc3\xa9"}}'
)
for k in "${!member_cases[@]}"; do
  printf '%b' "${member_cases[$k]}" > "seeds/envelope_members/edge-$k"
done

streams=(
  bare/chat_completion_stream_mid_error.sse
  bare/chat_completion_stream_cut_mid_answer.sse
  envelope/chat_completion_stream_mid_error.sse
  envelope/chat_completion_stream_mixed.sse
)
# Hand-written streams: CRLF and lone-CR line endings, a BOM, comments, multi-line data
# (also inside an envelope), fields other than data, an unterminated tail.
edge_cases=(
  '\xEF\xBB\xBFdata: {"a":1}\r\n\r\n: ping\r\r\ndata: [DONE]\r\r'
  'event: x\nid: 7\ndata\ndata:{"success":true,\ndata: "code":"200","data":\ndata:\ndata: {"x":[1,\ndata: 2]}}\n\n'
  '\n\ndata: {"code":0,"data":{"y":"\\u00e9"}}\r\rdata: {"error":{"code":503,"message":"m"}}\n\ndata: [DONE]'
  ': only a comment\n\ndata: {"success":false,"code":"429","message":"slow down","data":null}\n\ndata: x'
)

# sse_framer: a header (see fuzz_targets/sse_framer.rs) in front of each stream:
# one chunk; chunks of 7, 1 and 13 bytes; a cap of 200 with 5-byte chunks drained at the end.
headers=('\x00' '\x03\x07\x01\x0d' '\x31\xc8\x05')
for s in "${streams[@]}"; do
  name=$(basename "$(dirname "$s")")-$(basename "$s" .sse)
  cp "$fixtures/$s" "seeds/sse_transform/$name"
  for j in "${!headers[@]}"; do
    { printf "${headers[$j]}"; cat "$fixtures/$s"; } > "seeds/sse_framer/$name-h$j"
  done
done
for k in "${!edge_cases[@]}"; do
  printf '%b' "${edge_cases[$k]}" > "seeds/sse_transform/edge-$k"
  for j in "${!headers[@]}"; do
    { printf "${headers[$j]}"; printf '%b' "${edge_cases[$k]}"; } > "seeds/sse_framer/edge-$k-h$j"
  done
done

# upstream_response: a header (see fuzz_targets/upstream_response.rs) in front of a body:
# 200 event stream with Content-Length, chunked in 9-byte chunks with the last chunk, bare
# client of an envelope upstream with [DONE] required; the same cut short (chunked, no last
# chunk); a 200 JSON with Content-Length to a bare client of an envelope upstream; a 429 JSON
# both chunked and with a Content-Length 5 bytes short.
responses=(
  '\x00\x00\xb4\x02\x09:envelope/chat_completion_stream_mixed.sse'
  '\x00\x00\x90\x02\x09:envelope/chat_completion_stream.sse'
  '\x00\x00\x85\x00\x00:envelope/chat_completion.json'
  '\x0c\x00\x39\x28\x07:errors/openai_429_rate_limit.json'
)
for k in "${!responses[@]}"; do
  header=${responses[$k]%%:*}
  file=${responses[$k]#*:}
  { printf "$header"; cat "$fixtures/$file"; } > "seeds/upstream_response/response-$k"
done
for k in "${!edge_cases[@]}"; do
  { printf '\x00\x00\x44\x03\x05'; printf '%b' "${edge_cases[$k]}"; } > "seeds/upstream_response/edge-$k"
done
