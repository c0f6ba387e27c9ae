fn main() {
    std::process::exit(bigv_cli::run(std::env::args_os()));
}
