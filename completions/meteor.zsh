
#compdef meteor

_meteor_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _METEOR_COMPLETE=complete_zsh meteor)
}

compdef _meteor_completion meteor

