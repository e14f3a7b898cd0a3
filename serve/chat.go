package serve

import (
	"encoding/json"
	"net/http"

	"github.com/dllm-dev/dllm/tokenizer"
)

// chatPrompt renders messages with the model's chat template (with the
// assistant's generation prompt) and encodes them; the template's
// end-of-turn token joins the EOS set.
func (s *Server) chatPrompt(raw json.RawMessage, eos []int32) ([]int32, []int32, *apiError) {
	if s.chat == nil {
		return nil, eos, errorWith(http.StatusBadRequest, "invalid_request_error", "no_chat_template",
			"this model has no chat template (tokenizer_config.json has no chat_template; start the server with --chat-template FILE, or use /v1/completions)")
	}
	if len(raw) == 0 || string(raw) == "null" {
		return nil, eos, badRequest("messages", "messages is required")
	}
	var in []struct {
		Role    *string         `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, eos, badRequest("messages", "messages must be an array of {\"role\", \"content\"} objects")
	}
	if len(in) == 0 {
		return nil, eos, badRequest("messages", "messages is empty")
	}
	msgs := make([]tokenizer.Message, len(in))
	for i, m := range in {
		if m.Role == nil || *m.Role == "" {
			return nil, eos, badRequest("messages", "message %d has no role", i)
		}
		text, ok := contentText(m.Content)
		if !ok {
			return nil, eos, badRequest("messages", "message %d: content must be a string or an array of text parts", i)
		}
		msgs[i] = tokenizer.Message{Role: *m.Role, Content: text}
	}
	text, err := s.chat.Render(msgs, true)
	if err != nil {
		return nil, eos, badRequest("messages", "%v", err)
	}
	// The template writes the special tokens (BOS too) as text, so none
	// are added, as transformers' apply_chat_template(tokenize=True) does.
	var ids []int32
	for _, id := range s.tok.Encode(text, false) {
		ids = append(ids, int32(id))
	}
	if id, ok := s.tok.ID(s.chat.EndOfTurn()); ok && s.chat.EndOfTurn() != "" {
		eos = append(append([]int32(nil), eos...), int32(id))
	}
	return ids, eos, nil
}

// contentText reads a message's content: a string, or an array of parts of
// which the text ones are joined.
func contentText(raw json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return "", false
	}
	out := ""
	for _, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return "", false
		}
		out += *p.Text
	}
	return out, true
}
