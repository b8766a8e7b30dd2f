// Renders an Ollama TEMPLATE the way Ollama's template package hands it a chat (tests/test_export.py): the
// messages as given, the system messages also joined into .System. Reads {"template": ..., "conversations":
// [[message, ...], ...]} as JSON on stdin and writes the rendered prompts as a JSON list; a template error exits 1.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Request struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func main() {
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad request:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	rendered := []string{}
	for _, messages := range req.Conversations {
		var system []string
		for _, m := range messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var b strings.Builder
		values := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": messages, "Response": ""}
		if err := tmpl.Execute(&b, values); err != nil {
			fmt.Fprintln(os.Stderr, "execute:", err)
			os.Exit(1)
		}
		rendered = append(rendered, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(rendered); err != nil {
		os.Exit(2)
	}
}
