package corpus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// Separators for .txt files without <|endoftext|> markers.
const (
	SepBlank         = "blank"          // a blank line starts a new document (default)
	SepLine          = "line"           // every non-empty line is a document
	SepNone          = "none"           // the whole file is one document
	SepSingleNewline = "single-newline" // a lone "\n" separates documents, "\n\n" stays inside (TinyStories)
)

// EndOfText is the document marker of many text dumps (GPT-2 style).
const EndOfText = "<|endoftext|>"

// inputFile is one file of the corpus.
type inputFile struct {
	path string
	kind string // "txt" or "jsonl"
	size int64
}

func fileKind(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".txt", ".text", ".md":
		return "txt"
	case ".jsonl", ".json", ".ndjson":
		return "jsonl"
	}
	return ""
}

// listFiles expands paths (files and folders, folders recursively in sorted
// order; names starting with "." are skipped inside folders).
func listFiles(paths []string) ([]inputFile, error) {
	var out []inputFile
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, dataErrorf("corpus: %s: no such file or directory", p)
			}
			return nil, dataErrorf("corpus: %v", err)
		}
		if !st.IsDir() {
			if err := regfile.Check(p, st.Mode()); err != nil {
				return nil, dataErrorf("corpus: %v", err)
			}
			k := fileKind(p)
			if k == "" {
				k = "txt"
			}
			out = append(out, inputFile{p, k, st.Size()})
			continue
		}
		var found []inputFile
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if path != p && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() {
				return nil
			}
			k := fileKind(path)
			if k == "" {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Mode()&fs.ModeSymlink != 0 {
				if info, err = os.Stat(path); err != nil {
					return err
				}
			}
			if err := regfile.Check(path, info.Mode()); err != nil {
				return err
			}
			found = append(found, inputFile{path, k, info.Size()})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("corpus: %v", err)
		}
		if len(found) == 0 {
			return nil, dataErrorf("corpus: no .txt, .jsonl or .json files under %s", p)
		}
		sort.Slice(found, func(i, j int) bool { return found[i].path < found[j].path })
		out = append(out, found...)
	}
	return out, nil
}

// checkUTF8 names the first byte that is not UTF-8.
func checkUTF8(path string, data []byte) error {
	if utf8.Valid(data) {
		return nil
	}
	for i := 0; i < len(data); {
		r, sz := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && sz <= 1 {
			line := bytes.Count(data[:i], []byte("\n")) + 1
			return dataErrorf("corpus: %s: not UTF-8 at byte offset %d (line %d)", path, i, line)
		}
		i += sz
	}
	return nil
}

// splitDocuments turns the contents of one file into documents.
func splitDocuments(f inputFile, data []byte, sep, field string) ([]string, error) {
	if err := checkUTF8(f.path, data); err != nil {
		return nil, err
	}
	text := string(data)
	if f.kind == "jsonl" {
		return jsonlDocuments(f.path, text, field)
	}
	text = strings.TrimPrefix(text, "\ufeff")
	var docs []string
	add := func(s string) {
		if s = strings.TrimSpace(s); s != "" {
			docs = append(docs, s)
		}
	}
	if strings.Contains(text, EndOfText) {
		for _, d := range strings.Split(text, EndOfText) {
			add(d)
		}
		return docs, nil
	}
	text = strings.ReplaceAll(text, "\r\n", "\n")
	switch sep {
	case SepNone:
		add(text)
	case SepLine:
		for _, d := range strings.Split(text, "\n") {
			add(d)
		}
	case SepSingleNewline:
		start := 0
		for i := 0; i < len(text); i++ {
			if text[i] == '\n' && (i == 0 || text[i-1] != '\n') && (i+1 == len(text) || text[i+1] != '\n') {
				add(text[start:i])
				start = i + 1
			}
		}
		add(text[start:])
	default: // SepBlank: a line of only whitespace ends a document
		docStart, lastEnd := -1, 0
		for pos := 0; pos <= len(text); {
			end := strings.IndexByte(text[pos:], '\n')
			if end < 0 {
				end = len(text)
			} else {
				end += pos
			}
			if strings.TrimSpace(text[pos:end]) == "" {
				if docStart >= 0 {
					add(text[docStart:lastEnd])
					docStart = -1
				}
			} else {
				if docStart < 0 {
					docStart = pos
				}
				lastEnd = end
			}
			pos = end + 1
		}
		if docStart >= 0 {
			add(text[docStart:lastEnd])
		}
	}
	return docs, nil
}

func jsonlDocuments(path, text, field string) ([]string, error) {
	var docs []string
	line := 0
	for len(text) > 0 {
		line++
		var l string
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			l, text = text[:i], text[i+1:]
		} else {
			l, text = text, ""
		}
		if strings.TrimSpace(l) == "" {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &obj); err != nil {
			return nil, dataErrorf("corpus: %s:%d: not a JSON object: %v", path, line, err)
		}
		raw, ok := obj[field]
		if !ok {
			return nil, dataErrorf("corpus: %s:%d: no %q field (name the text field with the text-field option)", path, line, field)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, dataErrorf("corpus: %s:%d: field %q is not a string", path, line, field)
		}
		if s != "" {
			docs = append(docs, s)
		}
	}
	return docs, nil
}

// ReadDocuments returns the documents of paths, split the way Load splits
// them (for evaluations that score whole documents).
func ReadDocuments(paths []string, separator, field string) ([]string, error) {
	if separator == "" {
		separator = SepBlank
	}
	if field == "" {
		field = "text"
	}
	files, err := listFiles(paths)
	if err != nil {
		return nil, err
	}
	var docs []string
	for _, f := range files {
		data, err := regfile.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("corpus: %v", err)
		}
		d, err := splitDocuments(f, data, separator, field)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d...)
	}
	if len(docs) == 0 {
		return nil, dataErrorf("corpus: %s holds no text", strings.Join(paths, ", "))
	}
	return docs, nil
}
