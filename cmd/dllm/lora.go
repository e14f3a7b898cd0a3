package main

import "github.com/spf13/pflag"

// loraUsage are convert's LoRA flags (kept apart from convertUsage).
var loraUsage = map[string]string{
	"lora-rank":        "train LoRA adapters of this rank on a frozen base instead of every weight (0: full fine-tuning)",
	"lora-alpha":       "LoRA alpha: the adapters add (alpha/rank) B A (default: the rank)",
	"lora-dropout":     "dropout on the LoRA path's input",
	"lora-targets":     "linears that get adapters (comma-separated)",
	"lora-train-norms": "LoRA: train the RMSNorm weights too",
	"export":           "LoRA: final/ as the merged model (merged), final/adapter as a PEFT adapter (adapter), or both",
}

func init() {
	for k, v := range loraUsage {
		convertUsage[k] = v
	}
}

func adapterFlag(f *pflag.FlagSet, p *string) {
	f.StringVar(p, "adapter", "", "a PEFT LoRA adapter folder (dllm convert --lora-rank writes one in final/adapter), merged into DIR on load")
}
