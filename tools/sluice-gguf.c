int main(void) { return 1; } /* placeholder until this tool lands */
