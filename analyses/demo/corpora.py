"""The fixed texts the demo (and ``policylens entropy`` by default) runs on."""

CAPTURE_PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "Water boils at a temperature of",
    "The opposite of hot is",
]

ENTROPY_TEXTS = [
    "The cat sat on the mat and watched the birds outside the window.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The stock market fell sharply after the announcement of new tariffs.",
    "She opened the old book and found a letter hidden between the pages.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "To bake bread you need flour, water, salt and yeast.",
    "The football match ended in a draw after extra time.",
    "Quantum computers use qubits that can be in superposition.",
    "He walked to the station in the rain without an umbrella.",
    "The river flows from the mountains down to the sea.",
    "Honey never spoils if it is stored in a sealed jar.",
    "The committee will meet again next Tuesday to vote on the budget.",
]
