"""The papers the trainers implement, as their model cards cite them: one registry, [`PAPERS`], keyed by the
trainer's `_name` (`BaseTrainer._paper` reads it).

[`paper`] writes each BibTeX entry in one layout (the fields aligned, the title's capitals kept by double braces), so
an entry states only the paper's facts.
"""

from __future__ import annotations


def paper(arxiv_id: str, title: str, key: str, authors: str, year: int, **venue: str) -> dict[str, str]:
    """The `_paper` of a trainer: `{"title", "id", "citation"}`, read by `trl.trainer.model_card`.

    Args:
        arxiv_id (`str`):
            The arXiv id, e.g. `"2305.18290"`.
        title (`str`):
            The paper's title.
        key (`str`):
            The BibTeX key, e.g. `"rafailov2023direct"`.
        authors (`str`):
            The authors, BibTeX style (`"First Last and First Last"`).
        year (`int`):
            The year of publication.
        **venue (`str`):
            One entry field naming where it appeared: `booktitle=` (an `@inproceedings` entry), or `journal=` /
            `eprint=` (an `@article` entry).
    """
    kind = "inproceedings" if "booktitle" in venue else "article"
    fields = {"title": f"{{{title}}}", "author": authors, **venue}
    lines = [f"    {name:<12} = {{{value}}}," for name, value in fields.items()]
    lines.insert(2, f"    {'year':<12} = {year},")
    citation = "\n".join([f"@{kind}{{{key},", *lines, "}"])
    return {"title": title, "id": arxiv_id, "citation": citation}


# fmt: off
PAPERS: dict[str, dict[str, str]] = {
    "DPO": paper(
        "2305.18290", "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
        "rafailov2023direct", "Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and "
        "Stefano Ermon and Chelsea Finn", 2023, booktitle="Advances in Neural Information Processing Systems 36",
    ),
    "KTO": paper(
        "2402.01306", "KTO: Model Alignment as Prospect Theoretic Optimization", "ethayarajh2024kto",
        "Kawin Ethayarajh and Winnie Xu and Niklas Muennighoff and Dan Jurafsky and Douwe Kiela", 2024,
        eprint="arXiv:2402.01306",
    ),
    "BCO": paper(
        "2404.04656", "Binary Classifier Optimization for Large Language Model Alignment", "jung2024binary",
        "Seungjae Jung and Gunsoo Han and Daniel Wontae Nam and Kyoung-Woon On", 2024, eprint="arXiv:2404.04656",
    ),
    "CPO": paper(
        "2401.08417",
        "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in Machine Translation",
        "xu2024contrastive", "Haoran Xu and Amr Sharaf and Yunmo Chen and Weiting Tan and Lingfeng Shen and Benjamin "
        "Van Durme and Kenton Murray and Young Jin Kim", 2024,
        booktitle="Forty-first International Conference on Machine Learning",
    ),
    "ORPO": paper(
        "2403.07691", "ORPO: Monolithic Preference Optimization without Reference Model", "hong2024orpo",
        "Jiwoo Hong and Noah Lee and James Thorne", 2024,
        booktitle="Proceedings of the 2024 Conference on Empirical Methods in Natural Language Processing",
    ),
    "PRM": paper(
        "2211.14275", "Solving math word problems with process- and outcome-based feedback", "uesato2022solving",
        "Uesato, Jonathan and Kushman, Nate and Kumar, Ramana and Song, Francis and Siegel, Noah and Wang, Lisa and "
        "Creswell, Antonia and Irving, Geoffrey and Higgins, Irina", 2022, journal="arXiv preprint arXiv:2211.14275",
    ),
    "GRPO": paper(
        "2402.03300", "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
        "shao2024deepseekmath", "Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and "
        "Mingchuan Zhang and Y. K. Li and Y. Wu and Daya Guo", 2024, eprint="arXiv:2402.03300",
    ),
    "RLOO": paper(
        "2402.14740", "Back to Basics: Revisiting REINFORCE-Style Optimization for Learning from Human Feedback in "
        "LLMs", "ahmadian2024back", "Arash Ahmadian and Chris Cremer and Matthias Gall{\\'{e}} and Marzieh Fadaee and "
        "Julia Kreutzer and Olivier Pietquin and Ahmet {\\\"{U}}st{\\\"{u}}n and Sara Hooker", 2024, booktitle="ACL 2024",
    ),
    "Online DPO": paper(
        "2402.04792", "Direct Language Model Alignment from Online AI Feedback", "guo2024direct",
        "Shangmin Guo and Biao Zhang and Tianlin Liu and Tianqi Liu and Misha Khalman and Felipe Llinares and "
        "Alexandre Ram{\\'{e}} and Thomas Mesnard and Yao Zhao and Bilal Piot and Johan Ferret and Mathieu Blondel",
        2024, eprint="arXiv:2402.04792",
    ),
    "XPO": paper(
        "2405.21046", "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for Sample-Efficient "
        "RLHF", "xie2024exploratory", "Tengyang Xie and Dylan J. Foster and Akshay Krishnamurthy and Corby Rosset and "
        "Ahmed Awadallah and Alexander Rakhlin", 2024, eprint="arXiv:2405.21046",
    ),
    "PPO": paper(
        "1909.08593", "Fine-Tuning Language Models from Human Preferences", "mziegler2019fine-tuning",
        "Daniel M. Ziegler and Nisan Stiennon and Jeffrey Wu and Tom B. Brown and Alec Radford and Dario Amodei and "
        "Paul Christiano and Geoffrey Irving", 2019, eprint="arXiv:1909.08593",
    ),
    "Nash-MD": paper(
        "2312.00886", "Nash Learning from Human Feedback", "munos2024nash", "R{\\'{e}}mi Munos and Michal Valko and "
        "Daniele Calandriello and Mohammad Gheshlaghi Azar and Mark Rowland and Zhaohan Daniel Guo and Yunhao Tang and "
        "Matthieu Geist and Thomas Mesnard and C{\\^{o}}me Fiegel and Andrea Michi and Marco Selvi and Sertan Girgin "
        "and Nikola Momchev and Olivier Bachem and Daniel J. Mankowitz and Doina Precup and Bilal Piot", 2024,
        booktitle="ICML 2024",
    ),
    "GMPO": paper(
        "2507.20673", "Geometric-Mean Policy Optimization", "zhao2025geometric",
        "Yuzhong Zhao and Yue Liu and Junpeng Liu and Jingye Chen and Xun Wu and Yaru Hao and Tengchao Lv and "
        "Shaohan Huang and Lei Cui and Qixiang Ye and Fang Wan and Furu Wei", 2025, eprint="arXiv:2507.20673",
    ),
}
# fmt: on
