package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/dllm-dev/dllm/model"
	"github.com/dllm-dev/dllm/tokenizer"
)

func newTokenizeCmd() *cobra.Command {
	var text string
	var special, decode, skipSpecial bool
	cmd := &cobra.Command{
		Use:   "tokenize DIR",
		Short: "Encode text to ids or decode ids to text",
		Long: `tokenize loads the tokenizer of DIR (a model folder, or any folder with
tokenizer.json and optionally tokenizer_config.json) and encodes the text of
--text, or of stdin, printing the ids as a JSON array. With --decode it reads
a JSON array of ids instead and prints their text.`,
		Example: `  dllm tokenize ../shared/models/stories260K --text "Once upon a time"
  echo '[1, 403, 407]' | dllm tokenize ../shared/models/stories260K --decode`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, err := loadTokenizerDir(args[0])
			if err != nil {
				return err
			}
			input := text
			if !cmd.Flags().Changed("text") {
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return fmt.Errorf("reading stdin: %v", err)
				}
				input = string(b)
			}
			out := cmd.OutOrStdout()
			if decode {
				ids, err := parseIDs(input, tok.Size())
				if err != nil {
					return &exitError{2, err}
				}
				_, err = fmt.Fprintln(out, tok.Decode(ids, skipSpecial))
				return err
			}
			ids := tok.Encode(input, special)
			var b bytes.Buffer
			b.WriteByte('[')
			for i, id := range ids {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString(strconv.Itoa(id))
			}
			b.WriteString("]\n")
			_, err = out.Write(b.Bytes())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&text, "text", "", "text to encode (or ids to decode); default: read stdin")
	f.BoolVar(&special, "special", false, "add the tokenizer's special tokens (e.g. BOS) when encoding")
	f.BoolVar(&decode, "decode", false, "decode a JSON array of ids instead of encoding text")
	f.BoolVar(&skipSpecial, "skip-special", false, "leave special tokens out of decoded text")
	return cmd
}

// loadTokenizerDir loads DIR's tokenizer; a DIR it cannot load from is a
// *model.DirError (exit 2).
func loadTokenizerDir(dir string) (*tokenizer.Tokenizer, error) {
	st, err := statTokenizerDir(dir, "tokenizer.json")
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		if _, err := os.Stat(filepath.Join(dir, "tokenizer.json")); err != nil {
			return nil, &model.DirError{Dir: dir, Msg: fmt.Sprintf("%s has no tokenizer.json: point tokenize at a model folder or a folder holding tokenizer.json", dir), Err: err}
		}
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, &model.DirError{Dir: dir, Msg: err.Error(), Err: err}
	}
	return tok, nil
}

// statTokenizerDir is os.Stat of a model or tokenizer folder (or the file
// itself) refusing, with a *model.DirError, one that is not there; file
// names what it should hold.
func statTokenizerDir(dir, file string) (os.FileInfo, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &model.DirError{Dir: dir, Msg: fmt.Sprintf("%s: no such folder: pass a model folder or a folder holding %s", dir, file), Err: err}
	}
	if err != nil {
		return nil, &model.DirError{Dir: dir, Msg: fmt.Sprintf("cannot open %s: %v", dir, unwrapPathError(err)), Err: err}
	}
	return st, nil
}

// parseIDs reads a JSON array of token ids and checks them against size.
func parseIDs(s string, size int) ([]int, error) {
	var ids []int
	if err := json.Unmarshal([]byte(s), &ids); err != nil {
		return nil, fmt.Errorf("--decode wants a JSON array of token ids, like [1, 2, 3]: %v", err)
	}
	for _, id := range ids {
		if id < 0 || id >= size {
			return nil, fmt.Errorf("id %d is not in the tokenizer (ids 0-%d)", id, size-1)
		}
	}
	return ids, nil
}
