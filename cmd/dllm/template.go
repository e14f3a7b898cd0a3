package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/tokenizer"

	"github.com/dllm-dev/dllm/internal/regfile"
)

func newTemplateCmd() *cobra.Command {
	var messages, override string
	var genPrompt bool
	cmd := &cobra.Command{
		Use:   "template DIR",
		Short: "Render a conversation with a model's chat template",
		Long: `template renders the messages of --messages (a JSON array of {"role",
"content"}, or an object with "messages") with the chat template of DIR's
tokenizer_config.json, or of --chat-template FILE, exactly as transformers'
apply_chat_template(tokenize=False) does, and prints the text and nothing else.`,
		Example: `  dllm template ../shared/tokenizers/qwen3 --messages chat.json --generation-prompt
  dllm template ../shared/models/stories260K --chat-template testdata/chat/chatml.jinja --messages chat.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if messages == "" {
				return &exitError{2, fmt.Errorf("--messages FILE.json is required")}
			}
			if _, err := statTokenizerDir(args[0], "tokenizer_config.json"); err != nil {
				return err
			}
			data, err := regfile.ReadFile(messages)
			if err != nil {
				return fmt.Errorf("--messages: %v", unwrapPathError(err))
			}
			msgs, err := tokenizer.ParseMessages(data)
			if err != nil {
				return fmt.Errorf("%s: %v", messages, err)
			}
			ct, err := loadChatTemplate(args[0], override)
			if err != nil {
				return err
			}
			s, err := ct.Render(msgs, genPrompt)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), s)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&messages, "messages", "", "JSON file with the conversation")
	f.BoolVar(&genPrompt, "generation-prompt", false, "end with the template's assistant prompt (add_generation_prompt)")
	f.StringVar(&override, "chat-template", "", "Jinja file (or JSON with chat_template) to use instead of DIR's template")
	return cmd
}

// loadChatTemplate is tokenizer.LoadChatTemplate refusing a model without
// a template when no override is given (bad input: exit 2).
func loadChatTemplate(dir, override string) (*tokenizer.ChatTemplate, error) {
	ct, err := tokenizer.LoadChatTemplate(dir, override)
	if err == nil && ct == nil {
		err = &exitError{2, fmt.Errorf("%s has no chat_template in tokenizer_config.json: pass --chat-template FILE", dir)}
	}
	return ct, err
}
