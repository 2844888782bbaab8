// Chat template tests: llama.cpp's rendered chat prompts in the golden files (and their
// tokenization), the conversations of llama.cpp's tests/test-chat-template.cpp, fallback and
// custom templates.
#include <doctest/doctest.h>

#include <map>
#include <memory>

#include "json.hpp"
#include "test_support.hpp"
#include "tinyslm/chat.hpp"

using tinyslm::ChatMessage;
using tinyslm::ChatTemplate;
using tinyslm::Tokenizer;

namespace {

std::string find_model(const std::string& file) {
  for (const char* dir : {"models/", "models/vocab/", "models/quant/", "models/synthetic/"}) {
    std::string p = tinyslm_test::shared_dir() + "/" + dir + file;
    if (tinyslm_test::file_exists(p)) return p;
  }
  return "";
}

std::vector<std::string> list_golden() {
  std::vector<std::string> files;
  const std::string root = tinyslm_test::shared_dir() + "/golden/";
  FILE* p = popen(("cd '" + root + "' && ls *.json synthetic/*.json").c_str(), "r");
  if (!p) return files;
  char line[512];
  while (fgets(line, sizeof line, p)) {
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    if (s.size() > 14 && s.compare(s.size() - 14, 14, ".tokenize.json") == 0) continue;
    if (!s.empty()) files.push_back(s);
  }
  pclose(p);
  return files;
}

std::string ids_str(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t x : v) s += std::to_string(x) + " ";
  return s;
}

}  // namespace

TEST_CASE("chat prompts render and tokenize exactly as llama.cpp (golden files)" * doctest::test_suite("shared")) {
  if (tinyslm_test::shared_file("golden/README.md").empty()) return;
  const std::string root = tinyslm_test::shared_dir() + "/golden/";
  const auto files = list_golden();
  REQUIRE(files.size() >= 50);
  int n_files = 0, n_prompts = 0;
  for (const std::string& file : files) {
    const auto j = tinyslm_test::Json::parse(tinyslm_test::read_text(root + file));
    std::vector<const tinyslm_test::Json*> chats;
    for (const auto& p : j["prompts"].items())
      if (p["kind"].as_string() == "chat") chats.push_back(&p);
    if (chats.empty()) continue;
    const std::string path = find_model(j["model"]["file"].as_string());
    REQUIRE_MESSAGE(!path.empty(), "model of " << file);
    auto f = tinyslm::GgufFile::open(path);
    REQUIRE(f);
    auto tok = Tokenizer::from_gguf(*f);
    REQUIRE(tok);
    const ChatTemplate tmpl = ChatTemplate::from_gguf(*f, *tok);
    ++n_files;
    int ok = 0;
    for (const auto* p : chats) {
      std::vector<ChatMessage> msgs;
      for (const auto& m : (*p)["messages"].items()) msgs.push_back({m["role"].as_string(), m["content"].as_string()});
      auto text = tmpl.apply(msgs, true);
      REQUIRE_MESSAGE(text, file);
      const std::string want = (*p)["text"].as_string();
      bool good = true;
      if (*text != want) {
        good = false;
        FAIL_CHECK(file << " " << (*p)["id"].as_string() << " (" << std::string(tmpl.name()) << "):\n got  '" << *text
                        << "'\n want '" << want << "'");
      }
      auto ids = tok->encode(want, true, true);
      REQUIRE(ids);
      for (const char* key : {"tokens_add_special", "eval_tokens"}) {
        // The 2026 goldens (syn-{qwen35,gemma4,lfm2,smollm3}) give eval_tokens only.
        if (std::string(key) == "tokens_add_special" && !p->contains(key)) continue;
        const auto want_ids = (*p)[key].int_list();
        if (*ids != want_ids) {
          good = false;
          FAIL_CHECK(file << " " << (*p)["id"].as_string() << " " << key << ": got " << ids_str(*ids) << " want "
                          << ids_str(want_ids));
        }
      }
      ok += good;
      ++n_prompts;
    }
    MESSAGE(file << ": " << ok << "/" << chats.size() << " chat prompts match (template " << std::string(tmpl.name()) << ")");
  }
  CHECK(n_files >= 20);
  MESSAGE(n_files << " files, " << n_prompts << " chat prompts");
}

namespace {
// Conversations and expected renderings from llama.cpp's tests/test-chat-template.cpp
// (the Jinja output where llama.cpp lists one, else its built-in renderer's).
struct Case {
  const char* name;
  const char* tmpl;
  const char* expected;
  const char* bos;
  const char* eos;
};
const Case cases[] = {
    {"teknium/OpenHermes-2.5-Mistral-7B",
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
     "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n",
     "", ""},
    {"mistralai/Mistral-7B-Instruct-v0.2 (NOTE: Old pre-v1 without a system prompt)",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
     "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   </s>[INST] Another question [/INST]",
     "", "</s>"},
    {"google/gemma-7b-it",
     "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}",
     "<start_of_turn>user\nYou are a helpful assistant\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n",
     "", ""},
    {"deepseek-ai/deepseek-coder-33b-instruct",
     "{% if not add_generation_prompt is defined %}\n{% set add_generation_prompt = false %}\n{% endif %}\n{%- set ns = namespace(found=false) -%}\n{%- for message in messages -%}\n    {%- if message['role'] == 'system' -%}\n        {%- set ns.found = true -%}\n    {%- endif -%}\n{%- endfor -%}\n{{bos_token}}{%- if not ns.found -%}\n{{'You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you only answer questions related to computer science. For politically sensitive questions, security and privacy issues, and other non-computer science questions, you will refuse to answer\\n'}}\n{%- endif %}\n{%- for message in messages %}\n    {%- if message['role'] == 'system' %}\n{{ message['content'] }}\n    {%- else %}\n        {%- if message['role'] == 'user' %}\n{{'### Instruction:\\n' + message['content'] + '\\n'}}\n        {%- else %}\n{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{% if add_generation_prompt %}\n{{'### Response:'}}\n{% endif %}",
     "You are a helpful assistant### Instruction:\nHello\n### Response:\nHi there\n<|EOT|>\n### Instruction:\nWho are you\n### Response:\n   I am an assistant   \n<|EOT|>\n### Instruction:\nAnother question\n### Response:\n",
     "", ""},
    {"CohereForAI/c4ai-command-r-plus",
     "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% elif false == true %}{% set loop_messages = messages %}{% set system_message = 'You are Command-R, a brilliant, sophisticated, AI-assistant trained to assist human users by providing thorough responses. You are trained by Cohere.' %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% if system_message != false %}{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message + '<|END_OF_TURN_TOKEN|>' }}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% set content = message['content'] %}{% if message['role'] == 'user' %}{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}{% elif message['role'] == 'assistant' %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}",
     "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful assistant<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Who are you<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>I am an assistant<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Another question<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
     "", ""},
    {"Llama-3",
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}",
     "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
     "", ""},
    {"Phi-3-mini",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}",
     "<|user|>\nYou are a helpful assistant\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n",
     "", ""},
    {"Phi-3-small",
     "{{ bos_token }}{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
     "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n",
     "", ""},
    {"Phi-3-medium",
     "{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}",
     "<|user|>\nYou are a helpful assistant\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n",
     "", ""},
    {"Phi-3-vision",
     "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}",
     "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n",
     "", ""},
    {"DeepSeek-V2",
     "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
     ("You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>User: Who are you\n\nAssistant:    I am an assistant   <｜end▁of▁sentence｜>User: Another question\n\nAssistant:"),
     "", "<｜end▁of▁sentence｜>"},
    {"mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)",
     "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n",
     " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an assistant   </s> [INST] Another question [/INST]",
     "", "</s>"},
    {"Mistral-Large-Instruct-2407 (mistralai 'v3' template; modified to have system prompt at start)",
     "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n{%- set user_messages = loop_messages | selectattr(\"role\", \"equalto\", \"user\") | list %}\n\n{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n{%- set ns = namespace() %}\n{%- set ns.index = 0 %}\n{%- for message in loop_messages %}\n    {%- if not (message.role == \"tool\" or message.role == \"tool_results\" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n        {%- if (message[\"role\"] == \"user\") != (ns.index % 2 == 0) %}\n            {{- raise_exception(\"After the optional system message, conversation roles must alternate user/assistant/user/assistant/...\") }}\n        {%- endif %}\n        {%- set ns.index = ns.index + 1 %}\n    {%- endif %}\n{%- endfor %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS] [\" }}\n            {%- for tool in tools %}\n                {%- set tool = tool.function %}\n                {{- '{\"type\": \"function\", \"function\": {' }}\n                {%- for key, val in tool.items() if key != \"return\" %}\n                    {%- if val is string %}\n                        {{- '\"' + key + '\": \"' + val + '\"' }}\n                    {%- else %}\n                        {{- '\"' + key + '\": ' + val|tojson }}\n                    {%- endif %}\n                    {%- if not loop.last %}\n                        {{- \", \" }}\n                    {%- endif %}\n                {%- endfor %}\n                {{- \"}}\" }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- else %}\n                    {{- \"]\" }}\n                {%- endif %}\n            {%- endfor %}\n            {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif %}\n        {%- if loop.last and system_message is defined %}\n            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        {%- else %}\n            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n        {{- \"[TOOL_CALLS] [\" }}\n        {%- for tool_call in message.tool_calls %}\n            {%- set out = tool_call.function|tojson %}\n            {{- out[:-1] }}\n            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n                {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n            {%- endif %}\n            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n            {%- if not loop.last %}\n                {{- \", \" }}\n            {%- else %}\n                {{- \"]\" + eos_token }}\n            {%- endif %}\n        {%- endfor %}\n    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + eos_token}}\n    {%- elif message[\"role\"] == \"tool_results\" or message[\"role\"] == \"tool\" %}\n        {%- if message.content is defined and message.content.content is defined %}\n            {%- set content = message.content.content %}\n        {%- else %}\n            {%- set content = message.content %}\n        {%- endif %}\n        {{- '[TOOL_RESULTS] {\"content\": ' + content|string + \", \" }}\n        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n            {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n        {%- endif %}\n        {{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}\n    {%- else %}\n        {{- raise_exception(\"Only user and assistant roles are supported, with the exception of an initial optional system message!\") }}\n    {%- endif %}\n{%- endfor %}\n",
     "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>[INST] You are a helpful assistant\n\nAnother question[/INST]",
     "", "</s>"},
    {"Mistral-Nemo-Instruct-2407 (mistralai 'v3-tekken' template; modified to have system prompt at start)",
     "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n{%- set user_messages = loop_messages | selectattr(\"role\", \"equalto\", \"user\") | list %}\n\n{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n{%- set ns = namespace() %}\n{%- set ns.index = 0 %}\n{%- for message in loop_messages %}\n    {%- if not (message.role == \"tool\" or message.role == \"tool_results\" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n        {%- if (message[\"role\"] == \"user\") != (ns.index % 2 == 0) %}\n            {{- raise_exception(\"After the optional system message, conversation roles must alternate user/assistant/user/assistant/...\") }}\n        {%- endif %}\n        {%- set ns.index = ns.index + 1 %}\n    {%- endif %}\n{%- endfor %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS][\" }}\n            {%- for tool in tools %}\n                {%- set tool = tool.function %}\n                {{- '{\"type\": \"function\", \"function\": {' }}\n                {%- for key, val in tool.items() if key != \"return\" %}\n                    {%- if val is string %}\n                        {{- '\"' + key + '\": \"' + val + '\"' }}\n                    {%- else %}\n                        {{- '\"' + key + '\": ' + val|tojson }}\n                    {%- endif %}\n                    {%- if not loop.last %}\n                        {{- \", \" }}\n                    {%- endif %}\n                {%- endfor %}\n                {{- \"}}\" }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- else %}\n                    {{- \"]\" }}\n                {%- endif %}\n            {%- endfor %}\n            {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif %}\n        {%- if loop.last and system_message is defined %}\n            {{- \"[INST]\" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        {%- else %}\n            {{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}\n        {{- \"[TOOL_CALLS][\" }}\n        {%- for tool_call in message.tool_calls %}\n            {%- set out = tool_call.function|tojson %}\n            {{- out[:-1] }}\n            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n                {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n            {%- endif %}\n            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n            {%- if not loop.last %}\n                {{- \", \" }}\n            {%- else %}\n                {{- \"]\" + eos_token }}\n            {%- endif %}\n        {%- endfor %}\n    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- message[\"content\"] + eos_token}}\n    {%- elif message[\"role\"] == \"tool_results\" or message[\"role\"] == \"tool\" %}\n        {%- if message.content is defined and message.content.content is defined %}\n            {%- set content = message.content.content %}\n        {%- else %}\n            {%- set content = message.content %}\n        {%- endif %}\n        {{- '[TOOL_RESULTS]{\"content\": ' + content|string + \", \" }}\n        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n            {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n        {%- endif %}\n        {{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}\n    {%- else %}\n        {{- raise_exception(\"Only user and assistant roles are supported, with the exception of an initial optional system message!\") }}\n    {%- endif %}\n{%- endfor %}\n",
     "[INST]Hello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   </s>[INST]You are a helpful assistant\n\nAnother question[/INST]",
     "", "</s>"},
    {"mistralai/Mistral-Large-Instruct-2411 (mistralai 'v7' template)",
     "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}{% elif message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% else %}{{ raise_exception('Only user, system and assistant roles are supported!') }}{% endif %}{% endfor %}",
     "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST]    I am an assistant   </s>[INST] Another question[/INST]",
     "", "</s>"},
    {"phi-4",
     "{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|><|im_start|>assistant<|im_sep|>'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}",
     "<|im_start|>system<|im_sep|>You are a helpful assistant<|im_end|><|im_start|>user<|im_sep|>Hello<|im_end|><|im_start|>assistant<|im_sep|>Hi there<|im_end|><|im_start|>user<|im_sep|>Who are you<|im_end|><|im_start|>assistant<|im_sep|>   I am an assistant   <|im_end|><|im_start|>user<|im_sep|>Another question<|im_end|><|im_start|>assistant<|im_sep|>",
     "", ""},
};
}  // namespace

TEST_CASE("families render like llama.cpp's chat template tests") {
  const std::vector<ChatMessage> conversation = {
      {"system", "You are a helpful assistant"}, {"user", "Hello"},
      {"assistant", "Hi there"},                 {"user", "Who are you"},
      {"assistant", "   I am an assistant   "},  {"user", "Another question"},
  };
  for (const Case& c : cases) {
    const ChatTemplate t = ChatTemplate::from_string(c.tmpl, c.bos, c.eos);
    CAPTURE(c.name);
    CAPTURE(t.name());
    REQUIRE(t.kind() != ChatTemplate::Kind::unknown);
    auto out = t.apply(conversation, true);
    REQUIRE(out);
    CHECK(*out == std::string(c.expected));
  }
}

TEST_CASE("family detection, fallback and custom templates") {
  using K = ChatTemplate::Kind;
  CHECK(ChatTemplate::from_string("").kind() == K::none);
  CHECK(ChatTemplate::from_string("{{ 'hello' }}").kind() == K::unknown);
  CHECK(ChatTemplate::from_string("{% for m in messages %}<|user|>{{ m.content }}<|endoftext|>{% endfor %}").kind() == K::zephyr);
  CHECK(ChatTemplate::from_string("<|im_start|>{{ m }}<|im_end|>{% if enable_thinking %}<think>{% endif %}").kind() == K::qwen3);
  CHECK(ChatTemplate::from_string("{{ '<\xef\xbd\x9c" "User\xef\xbd\x9c>' }}{{ '<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>' }}").kind() == K::deepseek3);

  // No template: chatml, as llama.cpp renders it, and the caller can see it was a fallback.
  const ChatTemplate none = ChatTemplate::from_string("");
  auto r = none.apply({{"user", "Hi"}}, true);
  REQUIRE(r);
  CHECK(*r == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  CHECK(std::string(none.name()).find("fallback") != std::string::npos);

  // A template that is not recognised is an error, not a wrong prompt.
  auto u = ChatTemplate::from_string("{{ 'hello' }}").apply({{"user", "Hi"}}, true);
  REQUIRE(!u);
  CHECK(u.error().code() == tinyslm::Errc::unsupported);

  // Caller-supplied renderer.
  const ChatTemplate custom = ChatTemplate::from_function(
      [](std::span<const ChatMessage> m, bool gen) -> tinyslm::Expected<std::string> {
        std::string s;
        for (const auto& x : m) s += x.role + ": " + x.content + "\n";
        if (gen) s += "bot:";
        return s;
      });
  CHECK(custom.kind() == K::custom);
  CHECK(*custom.apply({{"user", "a"}, {"assistant", "b"}}, true) == "user: a\nassistant: b\nbot:");
  CHECK(!ChatTemplate::from_function(nullptr).apply({{"user", "a"}}, true));

  // Gemma: roles must alternate.
  auto g = ChatTemplate::from_string("{{ bos_token }}<start_of_turn>first_user_prefix").apply({{"user", "a"}, {"user", "b"}}, true);
  CHECK(!g);

  // Qwen3: thinking switched off adds an empty think block; reasoning of the last turn is kept.
  ChatTemplate q = ChatTemplate::from_string("<|im_start|>{{ enable_thinking }}<think>");
  q.set_enable_thinking(false);
  CHECK(*q.apply({{"user", "x"}}, true) ==
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  q.set_enable_thinking(true);
  CHECK(*q.apply({{"user", "x"}, {"assistant", "<think>\nhm\n</think>\n\nyes"}}, false) ==
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\nhm\n</think>\n\nyes<|im_end|>\n");
  CHECK(*q.apply({{"user", "x"}, {"assistant", "<think>\nhm\n</think>\n\nyes"}, {"user", "y"}}, false) ==
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>\n<|im_start|>user\ny<|im_end|>\n");

  // SmolLM2's chatml template carries a default system prompt, used when none is given.
  const ChatTemplate smol = ChatTemplate::from_string(
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
      "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
      "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}");
  CHECK(smol.kind() == K::chatml);
  CHECK(*smol.apply({{"user", "Hi"}}, true) ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  CHECK(*smol.apply({{"system", "S"}, {"user", "Hi"}}, false) ==
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");

  // TinyLlama-chat / Zephyr: turns end with the EOS text (Jinja with trim_blocks keeps the
  // newline after each expression).
  const ChatTemplate tiny = ChatTemplate::from_string(
      "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
      "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
      "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
      "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
      "<s>", "</s>", true, false);
  CHECK(tiny.kind() == K::zephyr);
  CHECK(*tiny.apply({{"system", "S"}, {"user", "Hi"}}, true) == "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\n");

  // Meta's Llama-2-chat template.
  const ChatTemplate l2 = ChatTemplate::from_string(
      "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
      "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
      "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
      "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
      "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
      "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
      "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
      "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
      "<s>", "</s>", true, false);
  CHECK(l2.kind() == K::llama2);
  CHECK(*l2.apply({{"system", "S"}, {"user", "Hi "}, {"assistant", " Yo"}, {"user", "Q"}}, true) ==
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Yo </s><s>[INST] Q [/INST]");

  // Llama 3.1+: the date line can be set.
  ChatTemplate l = ChatTemplate::from_string("<|start_header_id|><|end_header_id|>Cutting Knowledge Date");
  l.set_date_string("01 Jan 2026");
  CHECK(*l.apply({{"user", "x"}}, false) ==
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 01 Jan 2026\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST_CASE("family table: every kind has its own name, renders, and detection keeps its order") {
  using K = ChatTemplate::Kind;
  std::vector<std::string> names;
  const std::vector<ChatMessage> conversation = {{"user", "Hi"}, {"assistant", "Yo"}, {"user", "Q"}};
  for (int k = static_cast<int>(K::none); k <= static_cast<int>(K::falcon3); ++k) {
    const K kind = static_cast<K>(k);
    const std::string name = ChatTemplate::kind_name(kind);
    CAPTURE(name);
    CHECK(name != "?");
    CHECK(std::find(names.begin(), names.end(), name) == names.end());
    names.push_back(name);
    if (kind == K::unknown || kind == K::custom) continue;
    auto r = ChatTemplate::from_kind(kind, "<s>", "</s>").apply(conversation, true);
    REQUIRE(r);
    CHECK(!r->empty());
  }
  // Markers of two families: the one llama.cpp checks first wins.
  CHECK(ChatTemplate::from_string("<|im_start|>[INST]<start_of_turn>").kind() == K::chatml);
  CHECK(ChatTemplate::from_string("[INST]<|assistant|><|end|>").kind() == K::llama2);
  CHECK(ChatTemplate::from_string("<start_of_turn><|start_header_id|><|end_header_id|>").kind() == K::gemma);
  CHECK(ChatTemplate::from_string("<|assistant|><|end|><|user|></s>").kind() == K::phi3);
  CHECK(ChatTemplate::from_string("[INST][SYSTEM_PROMPT][AVAILABLE_TOOLS]").kind() == K::mistral_v7);
  CHECK(ChatTemplate::from_string("[INST][AVAILABLE_TOOLS] [INST]\"[INST]\"").kind() == K::mistral_v1);
  CHECK(ChatTemplate::from_string("[INST][AVAILABLE_TOOLS]\"[INST]\"").kind() == K::mistral_v3_tekken);
  CHECK(ChatTemplate::from_string("[INST][AVAILABLE_TOOLS]").kind() == K::mistral_v3);
  CHECK(ChatTemplate::from_string("mistral").kind() == K::llama2);
}

namespace {
// The 2026 families on conversations the golden prompts do not cover (thinking off, reasoning
// in past turns, tool results, consecutive replies, odd roles). Expected texts are Python
// jinja2's renderings of each file's own template (transformers convention), minus the BOS
// text where the tokenizer adds BOS; nullptr where the template raises an exception.
struct FamilyCase {
  const char* family;
  const char* id;
  bool enable_thinking;
  std::vector<ChatMessage> messages;
  const char* expected;
};
// SmolLM3's default /think instructions (stand in for @DEFAULT@ below).
const char* const smollm3_default_think =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves thoroughly exploring questions through a systematic thinking process before providing the final precise and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, backtracking, and iteration to develop well-considered thinking process. Please structure your response into two main sections: Thought and Solution using the specified format: <think> Thought section </think> Solution section. In the Thought section, detail your reasoning process in steps. Each step should include detailed considerations such as analysing questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, explorations, and reflections from the Thought section, systematically present the final solution that you deem correct. The Solution section should be logical, accurate, and concise and detail necessary steps needed to reach the conclusion.";
const FamilyCase family_cases[] = {
    {"qwen35", "think_history", true, {{"system", "  Be brief. \n"}, {"user", " Hi "}, {"assistant", "<think>\nhmm\n</think>\n\nHello!"}, {"user", "Again"}, {"assistant", "<think>ok</think>Sure."}},
     "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n<think>\nok\n</think>\n\nSure.<|im_end|>\n<|im_start|>assistant\n<think>\n"},
    {"qwen35", "no_think", false, {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}},
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"},
    {"qwen35", "tools", true, {{"user", "Weather?"}, {"assistant", "Calling."}, {"tool", "{\"t\": 20}"}, {"tool", "{\"h\": 5}"}, {"assistant", "It is 20."}},
     "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nCalling.<|im_end|>\n<|im_start|>user\n<tool_response>\n{\"t\": 20}\n</tool_response>\n<tool_response>\n{\"h\": 5}\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 20.<|im_end|>\n<|im_start|>assistant\n<think>\n"},
    {"qwen35", "tool_first", true, {{"tool", "r"}, {"user", "q"}},
     "\n<tool_response>\nr\n</tool_response><|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n"},
    {"qwen35", "think_cmd", true, {{"system", "Reply fast /no_think"}, {"user", "x"}},
     "<|im_start|>system\nReply fast /no_think<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\n"},
    {"qwen35", "think_cmd2", false, {{"system", "/think"}, {"user", "x"}},
     "<|im_start|>system\n/think<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"},
    {"qwen35", "two_assistants", true, {{"user", "a"}, {"assistant", "b"}, {"assistant", "<|channel>thought\nzz<channel|> c "}, {"user", "d"}},
     "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>assistant\n<|channel>thought\nzz<channel|> c<|im_end|>\n<|im_start|>user\nd<|im_end|>\n<|im_start|>assistant\n<think>\n"},
    {"qwen35", "developer", false, {{"developer", " dev "}, {"user", "u"}},
     nullptr},
    {"qwen35", "empty_system", true, {{"system", ""}, {"user", "u"}},
     "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n<think>\n"},
    {"qwen35", "late_system", true, {{"user", "u"}, {"system", "s"}},
     nullptr},
    {"gemma4", "think_history", true, {{"system", "  Be brief. \n"}, {"user", " Hi "}, {"assistant", "<think>\nhmm\n</think>\n\nHello!"}, {"user", "Again"}, {"assistant", "<think>ok</think>Sure."}},
     "<|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n<think>\nhmm\n</think>\n\nHello!<turn|>\n<|turn>user\nAgain<turn|>\n<|turn>model\n<think>ok</think>Sure.<turn|>\n<|turn>model\n"},
    {"gemma4", "no_think", false, {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}},
     "<|turn>user\nHi<turn|>\n<|turn>model\nHello<turn|>\n<|turn>user\nBye<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"},
    {"gemma4", "tools", true, {{"user", "Weather?"}, {"assistant", "Calling."}, {"tool", "{\"t\": 20}"}, {"tool", "{\"h\": 5}"}, {"assistant", "It is 20."}},
     "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\nWeather?<turn|>\n<|turn>model\nCalling.<turn|>\nIt is 20.<turn|>\n<|turn>model\n"},
    {"gemma4", "tool_first", true, {{"tool", "r"}, {"user", "q"}},
     "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\nq<turn|>\n<|turn>model\n"},
    {"gemma4", "think_cmd", true, {{"system", "Reply fast /no_think"}, {"user", "x"}},
     "<|turn>system\n<|think|>\nReply fast /no_think<turn|>\n<|turn>user\nx<turn|>\n<|turn>model\n"},
    {"gemma4", "think_cmd2", false, {{"system", "/think"}, {"user", "x"}},
     "<|turn>system\n/think<turn|>\n<|turn>user\nx<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"},
    {"gemma4", "two_assistants", true, {{"user", "a"}, {"assistant", "b"}, {"assistant", "<|channel>thought\nzz<channel|> c "}, {"user", "d"}},
     "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\na<turn|>\n<|turn>model\nb<turn|>\nc<turn|>\n<|turn>user\nd<turn|>\n<|turn>model\n"},
    {"gemma4", "developer", false, {{"developer", " dev "}, {"user", "u"}},
     "<|turn>system\ndev<turn|>\n<|turn>user\nu<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"},
    {"gemma4", "empty_system", true, {{"system", ""}, {"user", "u"}},
     "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\nu<turn|>\n<|turn>model\n"},
    {"gemma4", "late_system", true, {{"user", "u"}, {"system", "s"}},
     "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\nu<turn|>\n<|turn>system\ns<turn|>\n<|turn>model\n"},
    {"lfm2", "think_history", true, {{"system", "  Be brief. \n"}, {"user", " Hi "}, {"assistant", "<think>\nhmm\n</think>\n\nHello!"}, {"user", "Again"}, {"assistant", "<think>ok</think>Sure."}},
     "<|im_start|>system\n  Be brief. \n<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n<think>ok</think>Sure.<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "no_think", false, {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}},
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "tools", true, {{"user", "Weather?"}, {"assistant", "Calling."}, {"tool", "{\"t\": 20}"}, {"tool", "{\"h\": 5}"}, {"assistant", "It is 20."}},
     "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\nCalling.<|im_end|>\n<|im_start|>tool\n{\"t\": 20}<|im_end|>\n<|im_start|>tool\n{\"h\": 5}<|im_end|>\n<|im_start|>assistant\nIt is 20.<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "tool_first", true, {{"tool", "r"}, {"user", "q"}},
     "<|im_start|>tool\nr<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "think_cmd", true, {{"system", "Reply fast /no_think"}, {"user", "x"}},
     "<|im_start|>system\nReply fast /no_think<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "think_cmd2", false, {{"system", "/think"}, {"user", "x"}},
     "<|im_start|>system\n/think<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "two_assistants", true, {{"user", "a"}, {"assistant", "b"}, {"assistant", "<|channel>thought\nzz<channel|> c "}, {"user", "d"}},
     "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>assistant\n<|channel>thought\nzz<channel|> c <|im_end|>\n<|im_start|>user\nd<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "developer", false, {{"developer", " dev "}, {"user", "u"}},
     "<|im_start|>developer\n dev <|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "empty_system", true, {{"system", ""}, {"user", "u"}},
     "<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"},
    {"lfm2", "late_system", true, {{"user", "u"}, {"system", "s"}},
     "<|im_start|>user\nu<|im_end|>\n<|im_start|>system\ns<|im_end|>\n<|im_start|>assistant\n"},
    {"smollm3", "think_history", true, {{"system", "  Be brief. \n"}, {"user", " Hi "}, {"assistant", "<think>\nhmm\n</think>\n\nHello!"}, {"user", "Again"}, {"assistant", "<think>ok</think>Sure."}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n  Be brief.\n\n<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello!<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n<think>ok</think>Sure.<|im_end|>\n<|im_start|>assistant\n"},
    {"smollm3", "no_think", false, {{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /no_think\n\n## Custom Instructions\n\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"},
    {"smollm3", "tools", true, {{"user", "Weather?"}, {"assistant", "Calling."}, {"tool", "{\"t\": 20}"}, {"tool", "{\"h\": 5}"}, {"assistant", "It is 20."}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n@DEFAULT@\n\n<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\nCalling.<|im_end|>\n<|im_start|>user\n{\"t\": 20}<|im_end|>\n<|im_start|>user\n{\"h\": 5}<|im_end|>\n<|im_start|>assistant\nIt is 20.<|im_end|>\n<|im_start|>assistant\n"},
    {"smollm3", "tool_first", true, {{"tool", "r"}, {"user", "q"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n@DEFAULT@\n\n<|im_end|>\n<|im_start|>user\nr<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"},
    {"smollm3", "think_cmd", true, {{"system", "Reply fast /no_think"}, {"user", "x"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /no_think\n\n## Custom Instructions\n\nReply fast\n\n<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"},
    {"smollm3", "think_cmd2", false, {{"system", "/think"}, {"user", "x"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n@DEFAULT@\n\n<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"},
    {"smollm3", "two_assistants", true, {{"user", "a"}, {"assistant", "b"}, {"assistant", "<|channel>thought\nzz<channel|> c "}, {"user", "d"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n@DEFAULT@\n\n<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>assistant\n<|channel>thought\nzz<channel|> c <|im_end|>\n<|im_start|>user\nd<|im_end|>\n<|im_start|>assistant\n"},
    {"smollm3", "developer", false, {{"developer", " dev "}, {"user", "u"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /no_think\n\n## Custom Instructions\n\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"},
    {"smollm3", "empty_system", true, {{"system", ""}, {"user", "u"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n@DEFAULT@\n\n<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"},
    {"smollm3", "late_system", true, {{"user", "u"}, {"system", "s"}},
     "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n@DEFAULT@\n\n<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"},
};
}  // namespace

TEST_CASE("2026 chat families: Qwen3.5, Gemma 4, LFM2.5 and SmolLM3 render as their templates do" * doctest::test_suite("shared")) {
  for (const FamilyCase& c : family_cases) {
    const std::string path = find_model(std::string("syn-") + c.family + "-F32.gguf");
    if (path.empty()) continue;
    CAPTURE(c.family);
    CAPTURE(c.id);
    auto f = tinyslm::GgufFile::open(path);
    REQUIRE(f);
    auto tok = Tokenizer::from_gguf(*f);
    REQUIRE(tok);
    ChatTemplate tmpl = ChatTemplate::from_gguf(*f, *tok);
    tmpl.set_enable_thinking(c.enable_thinking);
    auto text = tmpl.apply(c.messages, true);
    if (!c.expected) {
      CHECK(!text);
      continue;
    }
    REQUIRE(text);
    std::string want = c.expected;
    if (size_t p = want.find("@DEFAULT@"); p != std::string::npos) want.replace(p, 9, smollm3_default_think);
    CHECK(*text == want);
  }
  using K = ChatTemplate::Kind;
  CHECK(ChatTemplate::from_string("<|im_start|>{{- '<think>\\n' }}<think>").kind() == K::qwen35);
  CHECK(ChatTemplate::from_string("<|im_start|>## Metadata\nReasoning Mode: enable_thinking").kind() == K::smollm3);
  CHECK(ChatTemplate::from_string("{{- bos_token -}}<|im_start|>keep_past_thinking").kind() == K::lfm2);
  CHECK(ChatTemplate::from_string("<|turn>user<turn|>").kind() == K::gemma4);
  CHECK(ChatTemplate::from_string("<|im_start|><think>enable_thinking").kind() == K::qwen3);
}
