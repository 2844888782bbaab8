// tinyslm chat templates: turn a list of messages into the prompt text a model was trained on.
//
// GGUF files carry their chat template as Jinja text (`tokenizer.chat_template`). tinyslm does
// not run Jinja: it recognises the common families from markers in that text and renders them
// with hand-written code that produces the same bytes llama.cpp's Jinja engine renders for the
// family's published templates (checked against llama.cpp's output in the tests). Families:
// chatml (and its Qwen2.5 / SmolLM variants with a default system prompt), Qwen3, Qwen3.5,
// SmolLM3, LFM2.5, Llama 2, Mistral v1/v3/v3-tekken/v7, Llama 3 and 3.1+, Gemma 2/3, Gemma 4,
// Phi-3 / Phi-3.5, Phi-4, Zephyr, DeepSeek (coder, V2, V3), Command-R, Falcon 3.
//
// A model without a template gets Kind::none and is rendered as chatml, as llama.cpp does; a
// template that is not recognised gives Kind::unknown and apply() fails with Errc::unsupported
// (render it yourself through from_function, or force a family with from_kind).
//
// Like llama.cpp, when the rendered text starts with the BOS token's text and the tokenizer
// adds BOS itself, that text is left out (and a trailing EOS text likewise when it adds EOS), so
// the result is ready for Tokenizer::encode(text, /*add_special=*/true, /*parse_special=*/true).
#pragma once

#include <functional>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core.hpp"
#include "gguf.hpp"
#include "tokenizer.hpp"

namespace tinyslm {
inline namespace TINYSLM_ABI_NAMESPACE {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (others are passed through where the family allows)
  std::string content;
};

class ChatTemplate {
 public:
  enum class Kind {
    none,       // the model has no template: rendered as chatml (llama.cpp's default)
    unknown,    // a template tinyslm does not recognise: apply() fails
    custom,     // a caller-supplied function
    chatml,     // <|im_start|>role\n...<|im_end|>\n (with the template's default system prompt, if any)
    qwen3,      // chatml with <think> handling of assistant turns
    qwen35,     // Qwen3.5: qwen3 with trimmed turns, every late assistant turn in <think>, "<think>\n" opened
    smollm3,    // chatml with a "## Metadata" system block (reasoning mode, default instructions)
    lfm2,       // LFM2.5: bos_token, chatml, reasoning dropped from all but the last assistant turn
    llama2,     // [INST] ... [/INST] (variants: with <<SYS>>, with BOS inside history, stripped)
    mistral_v1,
    mistral_v3,
    mistral_v3_tekken,
    mistral_v7,
    llama3,     // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
    llama3_1,   // Llama 3.1 / 3.2: system header with "Cutting Knowledge Date" and today's date
    gemma,      // <start_of_turn>user / model ... <end_of_turn>
    gemma4,     // <|turn>user / model ... <turn|> (thinking switched on in the system turn)
    phi3,       // <|role|>\n...<|end|>\n (Phi-3.5: system turns; Phi-3-mini: no system role)
    phi4,       // <|im_start|>role<|im_sep|>...<|im_end|>
    zephyr,     // <|role|>\n...<|endoftext|>\n
    deepseek,   // ### Instruction: / ### Response: (deepseek-coder)
    deepseek2,  // User: / Assistant: (DeepSeek-V2)
    deepseek3,  // <｜User｜> / <｜Assistant｜> (DeepSeek-V3 / R1)
    command_r,  // <|START_OF_TURN_TOKEN|><|USER_TOKEN|>...
    falcon3,    // <|role|>\n...\n
  };
  using Function = std::function<Expected<std::string>(std::span<const ChatMessage>, bool add_generation_prompt)>;

  ChatTemplate() = default;

  // From the model: its template text and its BOS/EOS token texts.
  static ChatTemplate from_gguf(const GgufFile& f, const Tokenizer& tok);
  static ChatTemplate from_gguf(const GgufFile& f);  // builds the tokenizer to learn BOS/EOS
  // From Jinja template text. bos_token / eos_token are the texts the template's bos_token /
  // eos_token stand for; strip_bos / strip_eos: the tokenizer adds them itself.
  static ChatTemplate from_string(std::string_view jinja, std::string bos_token = "", std::string eos_token = "",
                                  bool strip_bos = false, bool strip_eos = false);
  // A family by kind (e.g. Kind::chatml for a model whose template is missing or unknown).
  static ChatTemplate from_kind(Kind kind, std::string bos_token = "", std::string eos_token = "",
                                bool strip_bos = false, bool strip_eos = false);
  // The caller's own renderer.
  static ChatTemplate from_function(Function fn) {
    ChatTemplate t;
    t.kind_ = Kind::custom;
    t.fn_ = std::move(fn);
    return t;
  }

  Kind kind() const { return kind_; }
  static const char* kind_name(Kind k);
  const char* name() const { return kind_name(kind_); }
  const std::string& source() const { return source_; }  // the Jinja text ("" when none)

  // Llama 3.1+: the "Today Date" line. Default "26 Jul 2024", the date the template itself
  // falls back to; llama.cpp uses the current date when its Jinja engine runs the template.
  void set_date_string(std::string d) { date_ = std::move(d); }
  // The templates' enable_thinking (default true). Qwen3 / Qwen3.5: false adds an empty
  // <think></think> block to the generation prompt; SmolLM3: reasoning mode /no_think;
  // Gemma 4: no <|think|> system turn, an empty thought channel opens the reply.
  void set_enable_thinking(bool on) { enable_thinking_ = on; }

  Expected<std::string> apply(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  Expected<std::string> apply(std::initializer_list<ChatMessage> messages, bool add_generation_prompt) const {
    return apply(std::span<const ChatMessage>(messages.begin(), messages.size()), add_generation_prompt);
  }

 private:
  // A family tinyslm renders: how its template text is recognised, the variants read from
  // that text, and its renderer (which appends to `out`).
  using Render = Status (ChatTemplate::*)(std::string& out, std::span<const ChatMessage> m, bool gen) const;
  struct Family {
    Kind kind;
    const char* name;
    bool (*recognise)(std::string_view jinja);
    void (*configure)(ChatTemplate& t, std::string_view jinja);  // nullptr: no variants
    Render render;
  };
  static std::span<const Family> families();
  static const Family* family(Kind k);

  Kind kind_ = Kind::none;
  std::string source_;
  std::string bos_, eos_;
  bool strip_bos_ = false, strip_eos_ = false;
  // Variants inside a family.
  bool llama2_sys_ = false, llama2_bos_in_history_ = false, llama2_strip_ = false;
  bool gemma_system_ = true;       // Gemma 3 takes a system turn; Gemma 2 merges it into the user turn
  bool phi3_system_ = true;        // Phi-3.5 takes system turns; Phi-3-mini merges them
  bool template_bos_ = false;      // the template writes bos_token first
  bool phi3_eos_at_end_ = false;   // Phi-3.5: eos_token when no generation prompt
  bool zephyr_eos_ = false;        // turns end with eos_token rather than <|endoftext|>
  bool llama2_official_ = false;   // Llama-2-chat: BOS before each [INST], spaces around replies
  std::string default_system_;     // chatml variants: system prompt used when none is given
  std::string default_system_no_think_;  // SmolLM3: the one used in /no_think mode
  std::string date_ = "26 Jul 2024";
  bool enable_thinking_ = true;
  Function fn_;

  Expected<std::string> render(std::span<const ChatMessage> m, bool gen) const;
  Status render_chatml(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_qwen3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_qwen35(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_smollm3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_lfm2(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_gemma4(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_phi4(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama2(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama2_official(std::string& o, std::span<const ChatMessage> m) const;
  Status render_mistral_v1(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_mistral_v3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_mistral_v7(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_llama3_1(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_gemma(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_phi3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_zephyr(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_falcon3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_deepseek(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_deepseek2(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_deepseek3(std::string& o, std::span<const ChatMessage> m, bool gen) const;
  Status render_command_r(std::string& o, std::span<const ChatMessage> m, bool gen) const;
};

namespace detail {

inline std::string chat_trim(std::string_view s) {
  auto sp = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  size_t b = 0, e = s.size();
  while (b < e && sp(s[b])) ++b;
  while (e > b && sp(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

inline bool chat_contains(std::string_view hay, std::string_view needle) {
  return hay.find(needle) != std::string_view::npos;
}

inline bool chat_contains_all(std::string_view hay, std::initializer_list<std::string_view> needles) {
  for (std::string_view n : needles)
    if (!chat_contains(hay, n)) return false;
  return true;
}

// The [INST] family: Mistral's and Llama 2's templates.
inline bool chat_is_inst(std::string_view t) { return t.starts_with("mistral") || chat_contains(t, "[INST]"); }

// Mistral's official v1/v3 templates: the system message joins a user turn, tools are listed.
inline bool chat_is_mistral_official(std::string_view t) {
  return chat_contains(t, "' [INST] ' + system_message") || chat_contains(t, "[AVAILABLE_TOOLS]");
}

// A default system prompt written into a chatml template as a literal, e.g.
// '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. ...<|im_end|>\n'.
inline std::string chatml_default_system(std::string_view t) {
  const std::string_view head = "<|im_start|>system";
  for (size_t pos = t.find(head); pos != std::string_view::npos; pos = t.find(head, pos + 1)) {
    size_t p = pos + head.size();
    if (t.compare(p, 2, "\\n") == 0)
      p += 2;
    else if (p < t.size() && t[p] == '\n')
      p += 1;
    else
      continue;
    const size_t end = t.find("<|im_end|>", p);
    if (end == std::string_view::npos) continue;
    std::string_view body = t.substr(p, end - p);
    if (body.empty() || body.find_first_of("'\"{}+") != std::string_view::npos) continue;
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
        out.push_back('\n');
        ++i;
      } else {
        out.push_back(body[i]);
      }
    }
    return out;
  }
  return {};
}

// Qwen3: the index of the last user turn that is not a wrapped tool response.
inline size_t qwen3_last_query(std::span<const ChatMessage> msgs) {
  for (size_t i = msgs.size(); i-- > 0;) {
    const std::string& c = msgs[i].content;
    const bool tool_wrapped = c.rfind("<tool_response>", 0) == 0 && c.size() >= 16 &&
                              c.compare(c.size() - 16, 16, "</tool_response>") == 0;
    if (msgs[i].role == "user" && !tool_wrapped) return i;
  }
  return msgs.empty() ? 0 : msgs.size() - 1;
}

// Qwen3: an assistant message cut into its reasoning (inside <think>...</think>) and the
// answer after it, with the newlines the template strips.
inline void qwen3_split_reasoning(const std::string& message, std::string& content, std::string& reasoning) {
  content = message;
  reasoning.clear();
  const size_t close = content.rfind("</think>");
  if (close == std::string::npos) return;
  std::string after = content.substr(close + 8);
  after.erase(0, after.find_first_not_of('\n') == std::string::npos ? after.size() : after.find_first_not_of('\n'));
  std::string before = content.substr(0, content.find("</think>"));
  while (!before.empty() && before.back() == '\n') before.pop_back();
  const size_t open = before.rfind("<think>");
  if (open != std::string::npos) before = before.substr(open + 7);
  before.erase(0, before.find_first_not_of('\n') == std::string::npos ? before.size() : before.find_first_not_of('\n'));
  reasoning = before;
  content = after;
}

// Qwen3.5: the index of the last user turn whose trimmed text is not a wrapped tool
// response; npos when there is none (the template refuses such a conversation).
inline size_t qwen35_last_query(std::span<const ChatMessage> msgs) {
  for (size_t i = msgs.size(); i-- > 0;) {
    if (msgs[i].role != "user") continue;
    const std::string c = chat_trim(msgs[i].content);
    if (!(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))) return i;
  }
  return std::string::npos;
}

// The Jinja string literal whose opening quote is at t[q] (either quote), with its \n, \t,
// \" and \\ escapes read; "" when t[q] is not a quote.
inline std::string jinja_string_literal(std::string_view t, size_t q) {
  std::string out;
  if (q >= t.size() || (t[q] != '"' && t[q] != '\'')) return out;
  const char quote = t[q];
  for (size_t i = q + 1; i < t.size() && t[i] != quote; ++i) {
    if (t[i] != '\\' || i + 1 >= t.size()) {
      out.push_back(t[i]);
      continue;
    }
    const char e = t[++i];
    out.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
  }
  return out;
}

// SmolLM3: the template's default instructions, the long /think one first, then the short
// /no_think one (both literals start with the assistant's introduction).
inline void smollm3_default_systems(std::string_view t, std::string& think, std::string& no_think) {
  const std::string_view intro = "You are a helpful AI assistant named SmolLM";
  const size_t a = t.find(intro);
  if (a == std::string_view::npos || a == 0) return;
  think = jinja_string_literal(t, a - 1);
  const size_t b = t.find(intro, a + intro.size());
  if (b != std::string_view::npos) no_think = jinja_string_literal(t, b - 1);
}

// Gemma 4: a model turn without its thought channels (<|channel>...<channel|>), trimmed.
inline std::string gemma4_strip_thinking(std::string_view text) {
  std::string out;
  for (size_t pos = 0;;) {
    const size_t close = text.find("<channel|>", pos);
    std::string_view part = text.substr(pos, close == std::string_view::npos ? std::string_view::npos : close - pos);
    out += part.substr(0, part.find("<|channel>"));
    if (close == std::string_view::npos) break;
    pos = close + 10;
  }
  return chat_trim(out);
}

}  // namespace detail

// The families in detection order: the markers llama.cpp's llm_chat_detect_template looks
// for, plus the variants inside a family that change the rendered bytes. The first family
// whose markers are all present wins.
inline std::span<const ChatTemplate::Family> ChatTemplate::families() {
  using detail::chat_contains;
  using detail::chat_contains_all;
  using SV = std::string_view;
  static constexpr Family table[] = {
      {Kind::phi4, "phi4", [](SV s) { return chat_contains_all(s, {"<|im_start|>", "<|im_sep|>"}); }, nullptr,
       &ChatTemplate::render_phi4},
      {Kind::qwen35, "qwen3.5", [](SV s) { return chat_contains_all(s, {"<|im_start|>", "'<think>\\n'"}); }, nullptr,
       &ChatTemplate::render_qwen35},
      {Kind::smollm3, "smollm3",
       [](SV s) { return chat_contains_all(s, {"<|im_start|>", "## Metadata", "Reasoning Mode: "}); },
       [](ChatTemplate& t, SV s) { detail::smollm3_default_systems(s, t.default_system_, t.default_system_no_think_); },
       &ChatTemplate::render_smollm3},
      {Kind::lfm2, "lfm2", [](SV s) { return chat_contains_all(s, {"<|im_start|>", "keep_past_thinking"}); }, nullptr,
       &ChatTemplate::render_lfm2},
      {Kind::qwen3, "qwen3",
       [](SV s) {
         return chat_contains(s, "<|im_start|>") && (chat_contains(s, "<think>") || chat_contains(s, "enable_thinking") ||
                                                     chat_contains(s, "reasoning_content"));
       },
       nullptr, &ChatTemplate::render_qwen3},
      {Kind::chatml, "chatml", [](SV s) { return chat_contains(s, "<|im_start|>"); },
       [](ChatTemplate& t, SV s) { t.default_system_ = detail::chatml_default_system(s); }, &ChatTemplate::render_chatml},
      {Kind::mistral_v7, "mistral-v7", [](SV s) { return detail::chat_is_inst(s) && chat_contains(s, "[SYSTEM_PROMPT]"); },
       nullptr, &ChatTemplate::render_mistral_v7},
      {Kind::mistral_v1, "mistral-v1",
       [](SV s) { return detail::chat_is_inst(s) && detail::chat_is_mistral_official(s) && chat_contains(s, " [INST]"); },
       nullptr, &ChatTemplate::render_mistral_v1},
      {Kind::mistral_v3_tekken, "mistral-v3-tekken",
       [](SV s) { return detail::chat_is_inst(s) && detail::chat_is_mistral_official(s) && chat_contains(s, "\"[INST]\""); },
       nullptr, &ChatTemplate::render_mistral_v3},
      {Kind::mistral_v3, "mistral-v3", [](SV s) { return detail::chat_is_inst(s) && detail::chat_is_mistral_official(s); },
       nullptr, &ChatTemplate::render_mistral_v3},
      {Kind::llama2, "llama2", [](SV s) { return detail::chat_is_inst(s); },
       [](ChatTemplate& t, SV s) {
         t.llama2_sys_ = chat_contains(s, "<<SYS>>");
         t.llama2_bos_in_history_ = chat_contains(s, "bos_token + '[INST]");
         t.llama2_strip_ = chat_contains(s, "content.strip()");
         if (t.llama2_strip_ || t.llama2_bos_in_history_) t.llama2_sys_ = true;
         t.llama2_official_ = chat_contains(s, "bos_token + '[INST] ' + content.strip() + ' [/INST]'") &&
                              chat_contains(s, "' '  + content.strip() + ' ' + eos_token");
       },
       &ChatTemplate::render_llama2},
      {Kind::phi3, "phi3", [](SV s) { return chat_contains_all(s, {"<|assistant|>", "<|end|>"}); },
       [](ChatTemplate& t, SV s) {
         // Phi-3-mini/medium handle only 'user' and 'assistant'; Phi-3.5/small/vision write any role.
         t.phi3_system_ = chat_contains(s, "system") || !chat_contains(s, "'user'");
         t.phi3_eos_at_end_ = chat_contains(s, "eos_token");
       },
       &ChatTemplate::render_phi3},
      {Kind::falcon3, "falcon3", [](SV s) { return chat_contains_all(s, {"<|assistant|>", "<|user|>", "</s>"}); },
       nullptr, &ChatTemplate::render_falcon3},
      // Zephyr / TinyLlama-chat: turns end with eos_token ("</s>"), or with <|endoftext|> in
      // the StableLM variant.
      {Kind::zephyr, "zephyr",
       [](SV s) {
         return chat_contains(s, "<|user|>") &&
                (chat_contains(s, "<|endoftext|>") || chat_contains_all(s, {"<|assistant|>", "eos_token"}));
       },
       [](ChatTemplate& t, SV s) { t.zephyr_eos_ = !chat_contains(s, "<|endoftext|>"); }, &ChatTemplate::render_zephyr},
      // Gemma 4 writes bos_token after its macro definitions, not first.
      {Kind::gemma4, "gemma4", [](SV s) { return chat_contains_all(s, {"<|turn>", "<turn|>"}); },
       [](ChatTemplate& t, SV) { t.template_bos_ = true; }, &ChatTemplate::render_gemma4},
      {Kind::gemma, "gemma", [](SV s) { return chat_contains(s, "<start_of_turn>"); },
       [](ChatTemplate& t, SV s) { t.gemma_system_ = chat_contains(s, "first_user_prefix"); }, &ChatTemplate::render_gemma},
      {Kind::deepseek, "deepseek", [](SV s) { return chat_contains_all(s, {"### Instruction:", "<|EOT|>"}); }, nullptr,
       &ChatTemplate::render_deepseek},
      {Kind::command_r, "command-r",
       [](SV s) { return chat_contains_all(s, {"<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>"}); }, nullptr,
       &ChatTemplate::render_command_r},
      {Kind::llama3_1, "llama3.1",
       [](SV s) { return chat_contains_all(s, {"<|start_header_id|>", "<|end_header_id|>", "Cutting Knowledge Date"}); },
       nullptr, &ChatTemplate::render_llama3_1},
      {Kind::llama3, "llama3", [](SV s) { return chat_contains_all(s, {"<|start_header_id|>", "<|end_header_id|>"}); },
       nullptr, &ChatTemplate::render_llama3},
      {Kind::deepseek2, "deepseek2",
       [](SV s) { return chat_contains(s, "'Assistant: ' + message['content'] + eos_token"); }, nullptr,
       &ChatTemplate::render_deepseek2},
      {Kind::deepseek3, "deepseek3",
       [](SV s) {
         return chat_contains_all(s, {"<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>", "<\xef\xbd\x9c" "User\xef\xbd\x9c>"});
       },
       nullptr, &ChatTemplate::render_deepseek3},
  };
  return table;
}

inline const ChatTemplate::Family* ChatTemplate::family(Kind k) {
  for (const Family& fam : families())
    if (fam.kind == k) return &fam;
  return nullptr;
}

inline const char* ChatTemplate::kind_name(Kind k) {
  switch (k) {
    case Kind::none: return "none (chatml fallback)";
    case Kind::unknown: return "unknown";
    case Kind::custom: return "custom";
    default: break;
  }
  const Family* fam = family(k);
  return fam ? fam->name : "?";
}

inline ChatTemplate ChatTemplate::from_kind(Kind kind, std::string bos_token, std::string eos_token, bool strip_bos,
                                            bool strip_eos) {
  ChatTemplate t;
  t.kind_ = kind;
  t.bos_ = std::move(bos_token);
  t.eos_ = std::move(eos_token);
  t.strip_bos_ = strip_bos;
  t.strip_eos_ = strip_eos;
  return t;
}

inline ChatTemplate ChatTemplate::from_string(std::string_view s, std::string bos_token, std::string eos_token,
                                              bool strip_bos, bool strip_eos) {
  ChatTemplate t = from_kind(Kind::unknown, std::move(bos_token), std::move(eos_token), strip_bos, strip_eos);
  t.source_ = std::string(s);
  if (detail::chat_trim(s).empty()) {
    t.kind_ = Kind::none;
    return t;
  }
  // A template starting by writing bos_token ("{{ bos_token }}", "{{- bos_token }}").
  t.template_bos_ = detail::chat_contains(s.substr(0, std::min<size_t>(s.size(), 24)), "bos_token");
  for (const Family& fam : families()) {
    if (!fam.recognise(s)) continue;
    t.kind_ = fam.kind;
    if (fam.configure) fam.configure(t, s);
    break;
  }
  return t;
}

inline ChatTemplate ChatTemplate::from_gguf(const GgufFile& f, const Tokenizer& tok) {
  std::string src;
  if (auto v = f.get<std::string>("tokenizer.chat_template")) src = *v;
  std::string bos(tok.token_text(tok.bos())), eos(tok.token_text(tok.eos()));
  return from_string(src, bos, eos, tok.add_bos(), tok.add_eos());
}

inline ChatTemplate ChatTemplate::from_gguf(const GgufFile& f) {
  auto tok = Tokenizer::from_gguf(f);
  if (!tok) {
    std::string src;
    if (auto v = f.get<std::string>("tokenizer.chat_template")) src = *v;
    return from_string(src);
  }
  return from_gguf(f, *tok);
}

inline Expected<std::string> ChatTemplate::apply(std::span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  if (kind_ == Kind::custom) {
    if (!fn_) return make_error(Errc::invalid_argument, "chat template: empty custom function");
    return fn_(messages, add_generation_prompt);
  }
  if (kind_ == Kind::unknown)
    return make_error(Errc::unsupported,
                      "chat template not recognised; use ChatTemplate::from_kind(...) or from_function(...)");
  auto r = render(messages, add_generation_prompt);
  if (!r) return r;
  std::string out = std::move(*r);
  // What llama.cpp does with the rendered text when the tokenizer adds BOS / EOS itself.
  if (strip_bos_ && !bos_.empty() && out.compare(0, bos_.size(), bos_) == 0) out.erase(0, bos_.size());
  if (strip_eos_ && !eos_.empty() && out.size() >= eos_.size() &&
      out.compare(out.size() - eos_.size(), eos_.size(), eos_) == 0)
    out.erase(out.size() - eos_.size());
  return out;
}

inline Expected<std::string> ChatTemplate::render(std::span<const ChatMessage> msgs, bool gen) const {
  const Family* fam = family(kind_ == Kind::none ? Kind::chatml : kind_);
  if (!fam) return make_error(Errc::unsupported, "chat template: nothing to render");
  std::string o;
  if (template_bos_) o += bos_;
  if (Status s = (this->*fam->render)(o, msgs, gen); !s) return s.error();
  return o;
}

// ---------------------------------------------------------------------------------------
// One renderer per family. Each appends the conversation to `o`.
// ---------------------------------------------------------------------------------------

inline Status ChatTemplate::render_chatml(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  if (!default_system_.empty() && (msgs.empty() || msgs[0].role != "system"))
    o += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
  for (const auto& m : msgs) o += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (gen) o += "<|im_start|>assistant\n";
  return {};
}

inline Status ChatTemplate::render_qwen3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  if (!msgs.empty() && msgs[0].role == "system") o += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
  const size_t last_query = detail::qwen3_last_query(msgs);
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const bool is_last = i + 1 == msgs.size();
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      o += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content, reasoning;
      detail::qwen3_split_reasoning(m.content, content, reasoning);
      // Reasoning is kept only in the turns after the last user query.
      if (i > last_query && (is_last || !reasoning.empty())) {
        std::string r = reasoning;
        while (!r.empty() && r.front() == '\n') r.erase(0, 1);
        while (!r.empty() && r.back() == '\n') r.pop_back();
        std::string c = content;
        while (!c.empty() && c.front() == '\n') c.erase(0, 1);
        o += "<|im_start|>assistant\n<think>\n" + r + "\n</think>\n\n" + c;
      } else {
        o += "<|im_start|>assistant\n" + content;
      }
      o += "<|im_end|>\n";
    } else if (m.role == "tool") {
      // Consecutive tool results share one user turn.
      if (i == 0 || msgs[i - 1].role != "tool") o += "<|im_start|>user";
      o += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (is_last || msgs[i + 1].role != "tool") o += "<|im_end|>\n";
    }
  }
  if (gen) {
    o += "<|im_start|>assistant\n";
    if (!enable_thinking_) o += "<think>\n\n</think>\n\n";
  }
  return {};
}

inline Status ChatTemplate::render_qwen35(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  if (msgs.empty()) return make_error(Errc::invalid_argument, "qwen3.5 chat template: no messages");
  const size_t last_query = detail::qwen35_last_query(msgs);
  if (last_query == std::string::npos)
    return make_error(Errc::invalid_argument, "qwen3.5 chat template: no user query in the messages");
  if (msgs[0].role == "system") o += "<|im_start|>system\n" + chat_trim(msgs[0].content) + "<|im_end|>\n";
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const std::string text = chat_trim(m.content);
    const bool is_last = i + 1 == msgs.size();
    if (m.role == "system") {
      if (i != 0) return make_error(Errc::invalid_argument, "qwen3.5 chat template: system message not first");
    } else if (m.role == "user") {
      o += "<|im_start|>user\n" + text + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string content, reasoning;
      detail::qwen3_split_reasoning(text, content, reasoning);
      // Every assistant turn after the last query shows its (possibly empty) reasoning.
      if (i > last_query)
        o += "<|im_start|>assistant\n<think>\n" + chat_trim(reasoning) + "\n</think>\n\n" + content;
      else
        o += "<|im_start|>assistant\n" + content;
      o += "<|im_end|>\n";
    } else if (m.role == "tool") {
      // Consecutive tool results share one user turn; the template opens none for a
      // conversation that starts with a tool result.
      if (i > 0 && msgs[i - 1].role != "tool") o += "<|im_start|>user";
      o += "\n<tool_response>\n" + text + "\n</tool_response>";
      if (is_last || msgs[i + 1].role != "tool") o += "<|im_end|>\n";
    } else {
      return make_error(Errc::invalid_argument, "qwen3.5 chat template: unexpected role '" + m.role + "'");
    }
  }
  if (gen) o += enable_thinking_ ? "<|im_start|>assistant\n<think>\n" : "<|im_start|>assistant\n<think>\n\n</think>\n\n";
  return {};
}

// SmolLM3: a system turn of metadata and instructions always comes first; "/think" or
// "/no_think" in the system message overrides enable_thinking and is taken out of it.
inline Status ChatTemplate::render_smollm3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  bool think = enable_thinking_;
  std::string custom;
  if (!msgs.empty() && msgs[0].role == "system") {
    custom = msgs[0].content;
    if (detail::chat_contains(custom, "/no_think"))
      think = false;
    else if (detail::chat_contains(custom, "/think"))
      think = true;
    for (std::string_view tag : {std::string_view("/no_think"), std::string_view("/think")})
      for (size_t p = custom.find(tag); p != std::string::npos; p = custom.find(tag, p)) custom.erase(p, tag.size());
    while (!custom.empty() && std::string_view(" \t\n\r\v\f").find(custom.back()) != std::string_view::npos)
      custom.pop_back();
  }
  o += "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: ";
  o += think ? "/think\n\n" : "/no_think\n\n";
  o += "## Custom Instructions\n\n";
  if (!custom.empty())
    o += custom + "\n\n";
  else
    o += think ? default_system_ : default_system_no_think_;
  o += "<|im_end|>\n";
  const std::string empty_think = think ? "" : "<think>\n\n</think>\n";
  for (const auto& m : msgs) {
    if (m.role == "user") {
      o += "<|im_start|>user\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      const size_t b = m.content.find_first_not_of('\n');
      o += "<|im_start|>assistant\n" + empty_think + (b == std::string::npos ? "" : m.content.substr(b)) + "<|im_end|>\n";
    } else if (m.role == "tool") {
      o += "<|im_start|>user\n" + m.content + "<|im_end|>\n";
    }
  }
  if (gen) o += "<|im_start|>assistant\n" + empty_think;
  return {};
}

// LFM2.5: reasoning is kept only in the last assistant turn.
inline Status ChatTemplate::render_lfm2(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  size_t first = 0;
  if (!msgs.empty() && msgs[0].role == "system") {
    if (!msgs[0].content.empty()) o += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
    first = 1;
  }
  size_t last_assistant = std::string::npos;
  for (size_t i = first; i < msgs.size(); ++i)
    if (msgs[i].role == "assistant") last_assistant = i;
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    std::string content = m.content;
    if (m.role == "assistant" && i != last_assistant) {
      const size_t close = content.rfind("</think>");
      if (close != std::string::npos) content = detail::chat_trim(std::string_view(content).substr(close + 8));
    }
    o += "<|im_start|>" + m.role + "\n" + content + "<|im_end|>\n";
  }
  if (gen) o += "<|im_start|>assistant\n";
  return {};
}

// Gemma 4: thinking is switched on by <|think|> at the top of the system turn (written
// even without a system message); assistant turns lose their thought channels; tool
// results are only shown through tool calls, which ChatMessage does not carry.
inline Status ChatTemplate::render_gemma4(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  size_t first = 0;
  const bool system = !msgs.empty() && (msgs[0].role == "system" || msgs[0].role == "developer");
  if (enable_thinking_ || system) {
    o += "<|turn>system\n";
    if (enable_thinking_) o += "<|think|>\n";
    if (system) o += detail::chat_trim(msgs[first++].content);
    o += "<turn|>\n";
  }
  bool prev_assistant = false;  // the previous message that is not a tool result
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "tool") continue;
    const bool model = m.role == "assistant";
    // An assistant message right after another continues the same model turn.
    if (!(model && prev_assistant))
      o += "<|turn>" + (model ? std::string("model") : m.role) + "\n";
    o += model ? detail::gemma4_strip_thinking(m.content) : detail::chat_trim(m.content);
    o += "<turn|>\n";
    prev_assistant = model;
  }
  if (gen) {
    o += "<|turn>model\n";
    if (!enable_thinking_) o += "<|channel>thought\n<channel|>";
  }
  return {};
}

inline Status ChatTemplate::render_phi4(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) o += "<|im_start|>" + m.role + "<|im_sep|>" + m.content + "<|im_end|>";
  if (gen) o += "<|im_start|>assistant<|im_sep|>";
  return {};
}

inline Status ChatTemplate::render_llama2(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  if (llama2_official_) return render_llama2_official(o, msgs);
  using detail::chat_trim;
  bool inside = true;
  o += "[INST] ";
  for (const auto& m : msgs) {
    const std::string content = llama2_strip_ ? chat_trim(m.content) : m.content;
    if (!inside) {
      inside = true;
      o += llama2_bos_in_history_ ? "<s>[INST] " : "[INST] ";
    }
    if (m.role == "system") {
      if (llama2_sys_)
        o += "<<SYS>>\n" + content + "\n<</SYS>>\n\n";
      else
        o += content + "\n";
    } else if (m.role == "user") {
      o += content + " [/INST]";
    } else {
      o += content + "</s>";
      inside = false;
    }
  }
  return {};
}

// Meta's Llama-2-chat template: the system block joins the first user message, every user
// turn starts with BOS, replies are " reply </s>".
inline Status ChatTemplate::render_llama2_official(std::string& o, std::span<const ChatMessage> msgs) const {
  using detail::chat_trim;
  size_t first = 0;
  std::string system;
  if (!msgs.empty() && msgs[0].role == "system") {
    system = msgs[0].content;
    first = 1;
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if ((m.role == "user") != ((i - first) % 2 == 0))
      return make_error(Errc::invalid_argument, "llama2 chat template: roles must alternate user/assistant");
    std::string content = m.content;
    if (i == first && first == 1) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
    if (m.role == "user") {
      o += bos_ + "[INST] " + chat_trim(content) + " [/INST]";
    } else if (m.role == "assistant") {
      o += ' ';
      o += chat_trim(content);
      o += ' ';
      o += eos_;
    }
  }
  return {};
}

inline Status ChatTemplate::render_mistral_v1(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  bool inside = false;
  for (const auto& m : msgs) {
    if (!inside) {
      o += " [INST] ";
      inside = true;
    }
    if (m.role == "system") {
      o += m.content + "\n\n";
    } else if (m.role == "user") {
      o += m.content + " [/INST]";
    } else {
      o += " " + m.content + "</s>";
      inside = false;
    }
  }
  return {};
}

// Mistral v3 and v3-tekken (no spaces around [INST], replies untrimmed): the official
// templates put the system text into the last user turn.
inline Status ChatTemplate::render_mistral_v3(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  const bool v3 = kind_ == Kind::mistral_v3;
  const std::string sp = v3 ? " " : "";
  std::string system;
  size_t last_user = msgs.size();
  for (size_t i = 0; i < msgs.size(); ++i)
    if (msgs[i].role == "user") last_user = i;
  for (const auto& m : msgs)
    if (m.role == "system") system = m.content;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "user") {
      o += "[INST]" + sp + (i == last_user && !system.empty() ? system + "\n\n" : std::string()) + m.content + "[/INST]";
    } else if (m.role == "assistant") {
      o += sp + (v3 ? detail::chat_trim(m.content) : m.content) + "</s>";
    }
  }
  return {};
}

inline Status ChatTemplate::render_mistral_v7(std::string& o, std::span<const ChatMessage> msgs, bool) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += "[SYSTEM_PROMPT] " + m.content + "[/SYSTEM_PROMPT]";
    else if (m.role == "user")
      o += "[INST] " + m.content + "[/INST]";
    else
      o += " " + m.content + "</s>";
  }
  return {};
}

inline Status ChatTemplate::render_llama3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs)
    o += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + detail::chat_trim(m.content) + "<|eot_id|>";
  if (gen) o += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return {};
}

inline Status ChatTemplate::render_llama3_1(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  size_t first = 0;
  std::string system;
  if (!msgs.empty() && msgs[0].role == "system") {
    system = chat_trim(msgs[0].content);
    first = 1;
  }
  o += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: " + date_ +
       "\n\n" + system + "<|eot_id|>";
  for (size_t i = first; i < msgs.size(); ++i)
    o += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" + chat_trim(msgs[i].content) + "<|eot_id|>";
  if (gen) o += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return {};
}

inline Status ChatTemplate::render_gemma(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  size_t first = 0;
  std::string prefix;
  if (!msgs.empty() && msgs[0].role == "system") {
    // Gemma 3 writes the system text before the first turn's text; Gemma 2 has no system
    // role and llama.cpp merges it into the first user turn.
    prefix = gemma_system_ ? msgs[0].content + "\n\n" : msgs[0].content + "\n";
    first = 1;
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if ((m.role == "user") != ((i - first) % 2 == 0))
      return make_error(Errc::invalid_argument, "gemma chat template: roles must alternate user/assistant");
    const std::string role = m.role == "assistant" ? "model" : m.role;
    std::string text;
    if (i == first && !prefix.empty())
      text = gemma_system_ ? prefix + chat_trim(m.content) : chat_trim(prefix + m.content);
    else
      text = chat_trim(m.content);
    o += "<start_of_turn>" + role + "\n" + text + "<end_of_turn>\n";
  }
  if (gen) o += "<start_of_turn>model\n";
  return {};
}

inline Status ChatTemplate::render_phi3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  if (phi3_system_) {
    for (const auto& m : msgs) {
      if (m.role == "system") {
        if (!m.content.empty()) o += "<|system|>\n" + m.content + "<|end|>\n";
      } else if (m.role == "user" || m.role == "assistant") {
        o += "<|" + m.role + "|>\n" + m.content + "<|end|>\n";
      }
    }
    if (gen)
      o += "<|assistant|>\n";
    else if (phi3_eos_at_end_)
      o += eos_;
    return {};
  }
  // Phi-3-mini: no system role (llama.cpp puts the system text before the first user
  // message), and "<|assistant|>\n" follows every user turn.
  std::string pending;
  for (const auto& m : msgs) {
    if (m.role == "system") {
      pending = m.content;
    } else if (m.role == "user") {
      std::string c = pending.empty() ? m.content : pending + (m.content.empty() ? "" : "\n" + m.content);
      pending.clear();
      o += "<|user|>\n" + c + "<|end|>\n<|assistant|>\n";
    } else if (m.role == "assistant") {
      o += m.content + "<|end|>\n";
    }
  }
  return {};
}

inline Status ChatTemplate::render_zephyr(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs)
    o += "<|" + m.role + "|>\n" + m.content + (zephyr_eos_ ? eos_ : std::string("<|endoftext|>")) + "\n";
  if (gen) o += "<|assistant|>\n";
  return {};
}

inline Status ChatTemplate::render_falcon3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) o += "<|" + m.role + "|>\n" + m.content + "\n";
  if (gen) o += "<|assistant|>\n";
  return {};
}

inline Status ChatTemplate::render_deepseek(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += m.content;
    else if (m.role == "user")
      o += "### Instruction:\n" + m.content + "\n";
    else if (m.role == "assistant")
      o += "### Response:\n" + m.content + "\n<|EOT|>\n";
  }
  if (gen) o += "### Response:\n";
  return {};
}

inline Status ChatTemplate::render_deepseek2(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += m.content + "\n\n";
    else if (m.role == "user")
      o += "User: " + m.content + "\n\n";
    else if (m.role == "assistant")
      o += "Assistant: " + m.content + (eos_.empty() ? std::string(detail::deepseek_eos) : eos_);
  }
  if (gen) o += "Assistant:";
  return {};
}

inline Status ChatTemplate::render_deepseek3(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += m.content + "\n\n";
    else if (m.role == "user")
      o += "<\xef\xbd\x9c" "User\xef\xbd\x9c>" + m.content;
    else if (m.role == "assistant")
      o += "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>" + m.content + detail::deepseek_eos;
  }
  if (gen) o += "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";
  return {};
}

inline Status ChatTemplate::render_command_r(std::string& o, std::span<const ChatMessage> msgs, bool gen) const {
  using detail::chat_trim;
  for (const auto& m : msgs) {
    if (m.role == "system")
      o += "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" + m.content + "<|END_OF_TURN_TOKEN|>";
    else if (m.role == "user")
      o += "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>" + chat_trim(m.content) + "<|END_OF_TURN_TOKEN|>";
    else if (m.role == "assistant")
      o += "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" + chat_trim(m.content) + "<|END_OF_TURN_TOKEN|>";
  }
  if (gen) o += "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>";
  return {};
}

}  // inline namespace TINYSLM_ABI_NAMESPACE
}  // namespace tinyslm
