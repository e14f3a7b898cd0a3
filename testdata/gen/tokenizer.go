package main

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The tokenizer follows the structure of ../shared/models/stories260K's
// tokenizer.json (a Llama-2-style SentencePiece BPE with byte fallback).

// merges of common English pairs, each made of pieces that exist before it.
var merges = [][2]string{
	{"▁", "t"}, {"h", "e"}, {"▁t", "he"}, {"i", "n"}, {"e", "r"}, {"a", "n"}, {"▁", "a"},
	{"n", "d"}, {"▁a", "nd"}, {"o", "n"}, {"r", "e"}, {"e", "d"}, {"▁", "s"}, {"▁", "w"},
	{"o", "u"}, {"i", "t"}, {"i", "s"}, {"in", "g"}, {"▁t", "o"}, {"a", "t"}, {"e", "n"},
	{"▁", "o"}, {"▁o", "f"}, {"e", "s"}, {"▁", "h"}, {"o", "r"},
}

// vocab lists the pieces in id order.
func vocab() []string {
	v := []string{"<unk>", "<s>", "</s>"}
	for b := 0; b < 256; b++ {
		v = append(v, fmt.Sprintf("<0x%02X>", b))
	}
	v = append(v, "▁")
	for c := byte('!'); c <= '~'; c++ {
		v = append(v, string(c))
	}
	for _, m := range merges {
		v = append(v, m[0]+m[1])
	}
	return v
}

// orderedVocab marshals as a JSON object in id order.
type orderedVocab []string

func (v orderedVocab) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	b.WriteByte('{')
	for id, piece := range v {
		if id > 0 {
			b.WriteByte(',')
		}
		if err := enc.Encode(piece); err != nil {
			return nil, err
		}
		b.Truncate(b.Len() - 1) // Encode's newline
		fmt.Fprintf(&b, ":%d", id)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

type addedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type bpeModel struct {
	Type                    string       `json:"type"`
	Dropout                 any          `json:"dropout"`
	UnkToken                string       `json:"unk_token"`
	ContinuingSubwordPrefix any          `json:"continuing_subword_prefix"`
	EndOfWordSuffix         any          `json:"end_of_word_suffix"`
	FuseUnk                 bool         `json:"fuse_unk"`
	ByteFallback            bool         `json:"byte_fallback"`
	IgnoreMerges            bool         `json:"ignore_merges"`
	Vocab                   orderedVocab `json:"vocab"`
	Merges                  [][2]string  `json:"merges"`
}

type tokenizerFile struct {
	Version       string       `json:"version"`
	Truncation    any          `json:"truncation"`
	Padding       any          `json:"padding"`
	AddedTokens   []addedToken `json:"added_tokens"`
	Normalizer    any          `json:"normalizer"`
	PreTokenizer  any          `json:"pre_tokenizer"`
	PostProcessor any          `json:"post_processor"`
	Decoder       any          `json:"decoder"`
	Model         bpeModel     `json:"model"`
}

// obj is a JSON object that keeps its keys in the order given, as in the
// files transformers writes ("type" first): obj{"type", "BPE", "dropout", nil}.
type obj []any

func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; i+1 < len(o); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := marshal(o[i], "")
		if err != nil {
			return nil, err
		}
		v, err := marshal(o[i+1], "")
		if err != nil {
			return nil, err
		}
		b.Write(bytes.TrimSpace(k))
		b.WriteByte(':')
		b.Write(bytes.TrimSpace(v))
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func tokenizerJSON() ([]byte, error) {
	special := func(id int, s string) addedToken { return addedToken{ID: id, Content: s, Special: true} }
	seq := func(id string, typeID int) obj { return obj{"Sequence", obj{"id", id, "type_id", typeID}} }
	bos := func(typeID int) obj { return obj{"SpecialToken", obj{"id", "<s>", "type_id", typeID}} }
	f := tokenizerFile{
		Version:     "1.0",
		AddedTokens: []addedToken{special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")},
		Normalizer: obj{"type", "Sequence", "normalizers", []obj{
			{"type", "Prepend", "prepend", "▁"},
			{"type", "Replace", "pattern", obj{"String", " "}, "content", "▁"},
		}},
		PostProcessor: obj{
			"type", "TemplateProcessing",
			"single", []obj{bos(0), seq("A", 0)},
			"pair", []obj{bos(0), seq("A", 0), bos(1), seq("B", 1)},
			"special_tokens", obj{
				"<s>", obj{"id", "<s>", "ids", []int{1}, "tokens", []string{"<s>"}},
			},
		},
		Decoder: obj{"type", "Sequence", "decoders", []obj{
			{"type", "Replace", "pattern", obj{"String", "▁"}, "content", " "},
			{"type", "ByteFallback"},
			{"type", "Fuse"},
			{"type", "Strip", "content", " ", "start", 1, "stop", 0},
		}},
		Model: bpeModel{
			Type:         "BPE",
			UnkToken:     "<unk>",
			FuseUnk:      true,
			ByteFallback: true,
			Vocab:        vocab(),
			Merges:       merges,
		},
	}
	if n := len(f.Model.Vocab); n > vocabSize-1 {
		return nil, fmt.Errorf("tokenizer has %d tokens: no spare embedding row below %d", n, vocabSize)
	}
	seen := map[string]bool{}
	for _, p := range f.Model.Vocab[:len(f.Model.Vocab)-len(merges)] {
		seen[p] = true
	}
	for _, m := range merges {
		if !seen[m[0]] || !seen[m[1]] || seen[m[0]+m[1]] {
			return nil, fmt.Errorf("merge %q needs both parts before it and a new result", m)
		}
		seen[m[0]+m[1]] = true
	}
	return marshal(f, " ")
}

func tokenizerConfig(maxLen int) []byte {
	b, err := marshal(struct {
		Class       string `json:"tokenizer_class"`
		BOS         string `json:"bos_token"`
		EOS         string `json:"eos_token"`
		UNK         string `json:"unk_token"`
		AddBOS      bool   `json:"add_bos_token"`
		AddEOS      bool   `json:"add_eos_token"`
		CleanSpaces bool   `json:"clean_up_tokenization_spaces"`
		MaxLen      int    `json:"model_max_length"`
	}{"PreTrainedTokenizerFast", "<s>", "</s>", "<unk>", true, false, false, maxLen}, "  ")
	if err != nil {
		panic(err) // a fixed struct always marshals
	}
	return b
}
